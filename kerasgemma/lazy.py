"""Public names of a package loaded on first use (PEP 562), as `kerasgemma` and `kerasgemma.export` do.

Example:
>>> getattr_, dir_ = lazy_names("mypackage", {"dumps": "json"}, {})
>>> getattr_("dumps").__name__
'dumps'
>>> "dumps" in dir_()
True
"""

import importlib


def lazy_names(package, public, namespace):
    """`(__getattr__, __dir__)` for a package whose `public` names (name -> module) load on first use.

    Args:
        package: str. The package's name, for the error message.
        public: dict. Public name -> the module that defines it.
        namespace: dict. The package's `globals()`: a loaded name is stored
            there, so the next lookup does not come back here.
    """

    def __getattr__(name):
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(public[name]), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__

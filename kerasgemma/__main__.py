from kerasgemma.cli import main

raise SystemExit(main())

"""`make test` keeps each `xdist_group` on one worker, as the costly shared fixtures assume.

pytest-xdist's `--dist loadgroup` appends "@group" to a grouped test's node id
on the worker and schedules by that suffix. pytest 9.2 builds node ids from a
structured `NodeId` and ignores the rewrite, so every group was silently split
over the workers: the real-model references (the 270M Keras model and its
transformers reference, about 45 s) were built twice. requirements.txt pins
a pytest that honours it; this test fails if an upgrade breaks it again.
"""

import pytest


@pytest.mark.xdist_group("xdist_group_check")
def test_grouped_test_carries_its_group_in_the_node_id(request):
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not a pytest-xdist worker under --dist loadgroup")
    assert request.node.nodeid.endswith("@xdist_group_check"), request.node.nodeid

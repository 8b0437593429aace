"""``Sheep.io`` (sheep/daemon.py): where a store call runs.  Durable mode
tries a call's non-blocking variant (``cached``) inline first and runs the
blocking call on an I/O thread only when that variant would wait; ``-n``
runs small calls inline; big calls always go to a thread."""

import asyncio
import threading

import pytest

from sheep import config, daemon
from sheep.proto.errors import CODES, SdError, error_for
from sheep.store.base import WouldBlock

pytestmark = pytest.mark.quick


@pytest.fixture(params=[False, True], ids=["durable", "nosync"])
def node(request, tmp_path):
    argv = ["-n"] if request.param else []
    s = daemon.Sheep(config.parse([*argv, str(tmp_path / "base")]))
    s.open_store()
    yield s
    s._executor.shutdown(wait=True)
    s.store.close()


def where():
    return threading.current_thread().name


def run(coro):
    return asyncio.run(coro)


def test_a_small_call_with_a_cached_variant_runs_inline(node):
    calls = []

    def blocking():
        calls.append(("blocking", where()))
        return b"slow"

    def cached():
        calls.append(("cached", where()))
        return b"fast"
    got = run(node.io(blocking, size=4096, cached=cached))
    me = threading.current_thread().name
    if node.cfg.nosync:  # -n: the page cache is all there is; the call itself inline
        assert (got, calls) == (b"slow", [("blocking", me)])
    else:
        assert (got, calls) == (b"fast", [("cached", me)])


def test_a_cached_variant_that_would_wait_hands_over_to_an_io_thread(node):
    seen = []

    def cached():
        seen.append("cached")
        raise WouldBlock

    def blocking():
        seen.append(where())
        return b"from disk"
    assert run(node.io(blocking, size=4096, cached=cached)) == b"from disk"
    if not node.cfg.nosync:
        assert seen[0] == "cached" and seen[1].startswith("sheep-io")


def test_big_or_unsized_calls_never_run_inline(node):
    for size in (None, daemon.INLINE_MAX + 1):
        seen = []
        out = run(node.io(lambda: seen.append(where()) or b"x", size=size,
                          cached=lambda: seen.append("cached") or b"y"))
        assert out == b"x" and len(seen) == 1 and seen[0].startswith("sheep-io")


def test_an_answer_of_the_cached_variant_is_final(node):
    """NO_OBJ (or any store error) from the inline attempt is the answer, as
    it would have been from the blocking call; it is not retried on a thread."""
    ran = []

    def cached():
        raise error_for(CODES["NO_OBJ"], "not here")
    if node.cfg.nosync:  # -n never tries the variant: the call itself runs
        run(node.io(lambda: ran.append(1), size=4096, cached=cached))
        assert ran == [1]
        return
    with pytest.raises(SdError) as e:
        run(node.io(lambda: ran.append(1), size=4096, cached=cached))
    assert e.value.code == CODES["NO_OBJ"] and ran == []

import inspect
import subprocess
import sys

import asyncart


def test_all_is_the_contract():
    assert isinstance(asyncart.__all__, tuple)
    assert sorted(asyncart.__all__) == sorted(
        name for name in dir(asyncart) if not name.startswith("_") and name != "annotations"
    )
    for name in asyncart.__all__:
        obj = getattr(asyncart, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"asyncart.{name} has no docstring"


def test_every_error_derives_from_the_root():
    errors = [getattr(asyncart, n) for n in asyncart.__all__ if n.endswith("Error")]
    assert len(errors) == 18
    assert all(issubclass(e, asyncart.AsyncartError) for e in errors)
    assert issubclass(asyncart.InvalidInputError, ValueError)
    assert issubclass(asyncart.DeletedError, asyncart.NotFoundError)
    assert issubclass(asyncart.HasAliasesError, asyncart.InvalidInputError)
    assert issubclass(asyncart.CollectedError, asyncart.ConflictError)
    assert issubclass(asyncart.MissingPathError, asyncart.NotFoundError)
    assert issubclass(asyncart.MissingPathError, FileNotFoundError)
    assert issubclass(asyncart.MissingEntryError, KeyError)
    assert issubclass(asyncart.VerificationError, asyncart.IntegrityError)
    assert issubclass(asyncart.VerificationError, ValueError)
    assert issubclass(asyncart.MissingDistributedIdError, asyncart.InvalidInputError)
    assert issubclass(asyncart.MissingDistributedIdError, TypeError)


def test_importing_asyncart_leaves_aiohttp_for_server_stores():
    """aiohttp doubles what the garbage collector walks (longer event-loop pauses) and adds
    0.1 s to start-up: only a server store or the server loads it."""
    check = (
        "import sys, asyncart, asyncart._cli; assert 'aiohttp' not in sys.modules; "
        "from asyncart import HttpStore; assert 'aiohttp' in sys.modules; "
        "assert HttpStore is asyncart.HttpStore and 'HttpStore' in dir(asyncart)"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


def test_the_http_backend_is_imported_off_the_event_loop():
    """The first server store of a process imports aiohttp (0.1 s) in a worker thread."""
    check = """
import asyncio, sys, threading
import asyncart

imported_on = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp":
            imported_on.append(threading.current_thread().name)

sys.meta_path.insert(0, Watch())

async def main():
    try:
        await asyncart.audit(store="http://127.0.0.1:9")  # nothing listens there
    except asyncart.BackendUnavailableError:
        pass

asyncio.run(main())
assert imported_on and "MainThread" not in imported_on, imported_on
"""
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)

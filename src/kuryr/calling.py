"""Running one blocking SDK call from asyncio: the mechanism both OpenStack adapters share
(``kuryr.neutron`` and ``kuryr.octavia``), so that they run, repeat, map and observe calls
the same way.

Owns the order of things: the call runs in the adapter's bounded thread pool; a failure that
``is_repeatable`` says is safe to send again (a reset connection under a read or a delete) is
sent once more after 0.1 s; any other failure is mapped by the adapter's one ``translate``
function into a kuryr error, raised ``from`` the original; the observer is told the
operation, the result (``ok``, the error class, ``Cancelled``) and the seconds taken. It
knows no SDK: the adapter passes its own mapping in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kuryr import errors

LOG = logging.getLogger(__name__)


class Deferred:
    """Stands for ``getattr(owner, name)`` (an SDK connection's service proxy) without
    resolving it: each attribute is a callable that resolves the proxy when called. An adapter
    can then name ``proxy.create_port`` on the event loop and run it in its thread pool, where
    the proxy's first resolution (endpoint discovery: HTTP up to the SDK's timeout) happens,
    and where a failure of it is mapped like the call's own."""

    def __init__(self, owner: Any, name: str) -> None:
        self._owner = owner
        self._name = name

    def __getattr__(self, attribute: str) -> Callable[..., Any]:
        owner, name = self._owner, self._name

        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(getattr(owner, name), attribute)(*args, **kwargs)

        call.__name__ = attribute
        return call
_T = TypeVar("_T")
# (operation, result, seconds): what a facade tells its observer (metrics) after each call.
Observer = Callable[[str, str, float], None]
Translate = Callable[[BaseException, str], errors.KuryrError]
Repeatable = Callable[[BaseException, str], bool]


async def call(pool: concurrent.futures.Executor, fn: Callable[..., _T], *args: Any,
               what: str, operation: str, translate: Translate, is_repeatable: Repeatable,
               observer: Observer | None = None, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` in ``pool``; ``what`` names the call in errors ("create port on
    network X"), ``operation`` in metrics ("create port"). Raises what ``translate`` gives."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    result = "ok"
    bound = functools.partial(fn, *args, **kwargs)
    try:
        try:
            return await loop.run_in_executor(pool, bound)
        except Exception as e:
            if not is_repeatable(e, what):
                raise
            LOG.info("%s: %s; sending it once more", what, type(e).__name__)
            await asyncio.sleep(0.1)
            return await loop.run_in_executor(pool, bound)
    except Exception as e:
        error = translate(e, what)
        result = type(error).__name__
        raise error from e
    except BaseException:  # cancelled: the SDK call may still finish in its thread
        result = "Cancelled"
        raise
    finally:
        if observer is not None:
            observer(operation, result, time.monotonic() - started)

"""The daemon runs on uvloop when it is installed (``colab-gateway[fast]``) and on
asyncio's own loop when it is not."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.daemon import run_event_loop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def _run() -> str:
    result: dict[str, str] = {}

    async def main() -> int:
        result["module"] = await _loop_module()
        return 7

    assert run_event_loop(main()) == 7  # the coroutine's result is the exit status
    return result["module"]


def test_uses_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert _run().startswith("uvloop")


def test_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert _run().startswith("asyncio")

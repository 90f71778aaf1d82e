"""A child process on pipes that behaves the same on asyncio's loop and on uvloop.

``subprocess.Popen`` starts it, so everything the standard library guarantees holds on any loop: descriptors
closed except ``pass_fds`` (the agent port's listening socket is never inherited), ``umask``, ``user``, ``group``
and ``extra_groups`` applied, its own session. uvloop's own ``subprocess_exec`` ignores ``close_fds``, takes
none of ``umask``, ``user`` or ``group``, and reports a closed stdout only at exit; with this module nothing
starts a process through the loop. The loop only watches the pipes (``connect_read_pipe``,
``connect_write_pipe``) and the exit (a pidfd, readable once the child has exited, so no child watcher thread and
no SIGCHLD handler).

A write is one ``transport.write`` of the whole message, so concurrent writers never interleave and need no lock;
the writer waits only when the pipe's buffer is past its high-water mark.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from typing import Any

import anyio
import anyio.abc


class _Reader(anyio.abc.ByteReceiveStream):
    """A pipe from the child, read as chunks (EOF ends the iteration)."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport):
        self._reader = reader
        self._transport = transport
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        data = await self._reader.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        self._closed = True
        self._transport.close()


class _Writer(anyio.abc.ByteSendStream):
    """A pipe to the child."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._transport = writer.transport

    async def send(self, item: bytes) -> None:
        if self._transport.is_closing():
            raise anyio.BrokenResourceError
        self._transport.write(item)
        if self._transport.get_write_buffer_size() > 0:
            # Only a full pipe makes a writer wait (drain returns at once below the high-water mark, and raises
            # once the child has closed its end).
            try:
                await self._writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        self._transport.close()


class PipedProcess(anyio.abc.Process):
    """What ``anyio.open_process`` returns, for a process ``Popen`` started; its exit is seen through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: _Writer, stdout: _Reader, stderr: _Reader):
        self._popen = popen
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._exited = asyncio.get_running_loop().create_future()
        self._watch()

    def _watch(self) -> None:
        loop = self._exited.get_loop()
        try:
            fd = os.pidfd_open(self._popen.pid)
        except OSError:  # no pidfd (kernel before 5.3): a thread waits instead
            loop.run_in_executor(None, self._popen.wait).add_done_callback(lambda _: self._reaped())
            return

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._popen.wait()  # already exited: reaps it without blocking
            self._reaped()

        loop.add_reader(fd, exited)

    def _reaped(self) -> None:
        if not self._exited.done():
            self._exited.set_result(self._popen.returncode)

    async def aclose(self) -> None:
        for stream in (self._stdin, self._stdout, self._stderr):
            await stream.aclose()
        await self.wait()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:
            try:
                os.kill(self._popen.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._exited.done() else None

    @property
    def stdin(self) -> anyio.abc.ByteSendStream:
        return self._stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream:
        return self._stderr


async def spawn(argv: list[str], env: dict[str, str] | None, cwd: str | None, **extra: Any) -> PipedProcess:
    """Start ``argv`` with stdin, stdout and stderr on pipes, in its own session; ``extra`` goes to ``Popen``
    (``pass_fds``, ``umask``, ``user``, ``group``, ``extra_groups``)."""
    loop = asyncio.get_running_loop()
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
        **extra,
    )
    assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
    try:
        streams = []
        for pipe in (popen.stdout, popen.stderr):
            reader = asyncio.StreamReader(limit=2**31, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)  # noqa: B023 (awaited here)
            streams.append(_Reader(reader, transport))
        wtransport, wprotocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, popen.stdin)
        writer = asyncio.StreamWriter(wtransport, wprotocol, None, loop)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    return PipedProcess(popen, _Writer(writer), streams[0], streams[1])

"""The "direct" contender for Python: one plain asyncio HTTP server calling a handler
module in-process, the Python counterpart of server.js. Every request becomes one handler
call: an `async def` handler is awaited on the loop, a plain `def` one runs in the loop's
default thread pool. The handler's {statusCode, body} is the response. No Shoal involved.

Usage: python3 server.py FUNCTION_DIR MODULE FUNCTION   (prints "listening PORT" when ready)
Standard library only; HTTP/1.1 with keep-alive, enough for the benchmark's clients.
"""

import asyncio
import importlib
import inspect
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor


async def serve_connection(handler, is_async, reader, writer):
    loop = asyncio.get_running_loop()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            event = {"rawPath": target.split("?", 1)[0], "requestContext": {"http": {"method": method}}}
            try:
                if is_async:
                    result = await handler(event, None)
                else:
                    result = await loop.run_in_executor(None, handler, event, None)
                status = int(result.get("statusCode", 200))
                body = str(result.get("body", "")).encode()
            except Exception:  # noqa: BLE001 - the error is the response
                status, body = 500, traceback.format_exc().encode()
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n"
                % (status, len(body), b"connection: close\r\n" if close else b"")
                + body
            )
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(directory, module_name, function_name):
    sys.path.insert(0, directory)
    handler = getattr(importlib.import_module(module_name), function_name)
    is_async = inspect.iscoroutinefunction(handler)
    # As many threads as calls may wait at once in a sync handler (the burst's size).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=256))
    server = await asyncio.start_server(
        lambda r, w: serve_connection(handler, is_async, r, w), "127.0.0.1", 0, backlog=1024
    )
    print("listening %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

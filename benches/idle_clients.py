"""Idle keep-alive clients for benches/vs_nginx.sh's memory check.

    python3 idle_clients.py PORT PATH COUNT

Opens COUNT connections to 127.0.0.1:PORT, sends one GET PATH on each and
reads the whole answer (a 2xx with Content-Length, else it fails), then prints
`open` and holds them all until a line arrives on stdin; then closes them,
prints `closed` and waits for the next line (`again` repeats, EOF ends).
"""

import asyncio
import sys


async def one(port, path, held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gitlab.example.com\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if not 200 <= status < 300:
        raise SystemExit(f"error: {path} answered {status}")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    held.append(writer)


async def burst(port, path, count):
    held = []
    # A few hundred handshakes at a time: the listen backlog stays within bounds.
    gate = asyncio.Semaphore(200)

    async def gated():
        async with gate:
            await one(port, path, held)

    await asyncio.gather(*(gated() for _ in range(count)))
    return held


async def main():
    port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    loop = asyncio.get_running_loop()
    while True:
        held = await burst(port, path, count)
        print("open", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        for writer in held:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in held), return_exceptions=True)
        print("closed", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "again":
            return


asyncio.run(main())

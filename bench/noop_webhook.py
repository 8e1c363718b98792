"""A mutating admission webhook that answers `allowed` at once, with no patch: the floor of what any webhook
costs a Pod create on this machine, as the apiserver measures it (`operator_vs_builtin.py --noop-webhook`).

It does the least a webhook can: read the request, take the review's uid from its JSON, write a constant
answer. HTTP/1.1 over TLS with kept-alive connections, as the operator's admission server speaks it.

    .venv/bin/python bench/noop_webhook.py --cert CERT --key KEY --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed a kept-alive connection
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            review = json.loads(await reader.readexactly(length))
            body = json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {"uid": review["request"]["uid"], "allowed": True},
                }
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        return
    finally:
        writer.close()


async def main(host: str, port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(serve_connection, host, port, ssl=context)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port, args.cert, args.key))
    except KeyboardInterrupt:
        sys.exit(0)

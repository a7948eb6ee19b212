"""The seed's hello function in Python: a large array made once per instance, a sum over
it (~100 ms of CPU), a 2 s wait on "I/O", an instance id and a per-instance invocation
counter. `hello` waits with `await asyncio.sleep` (many calls share the instance's event
loop); `hello_sync` with `time.sleep` (many calls share its thread pool).
"""

import asyncio
import threading
import time
import uuid
from array import array

A_LENGTH = 10_000_000
a = array("q", range(A_LENGTH))  # a very large array, 80 MB, filled at load
instance_id = str(uuid.uuid4())
invocations = 0
lock = threading.Lock()


def count():
    global invocations
    with lock:
        invocations += 1
        return invocations


def respond(invocation_id, total):
    body = f"{instance_id},{invocation_id},{A_LENGTH},{total},Hello World\n"
    return {"statusCode": 200, "body": body}


async def hello(event, context):
    invocation_id = count()
    total = sum(a)  # sum all the numbers of array a
    await asyncio.sleep(2)  # relinquish control for 2 seconds
    return respond(invocation_id, total)


def hello_sync(event, context):
    invocation_id = count()
    total = sum(a)
    time.sleep(2)  # a blocking wait: a thread of the pool holds it
    return respond(invocation_id, total)

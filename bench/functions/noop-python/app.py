"""A no-op Python handler: what a call costs with nothing to do."""


async def handler(event, context):
    return {"statusCode": 200, "body": "ok"}

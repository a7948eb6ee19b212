// The overhead scenario's function: no work at all, so what is measured is the platform.
module.exports.handler = async () => ({ statusCode: 200, body: 'ok' });

//! API Gateway's two payload formats through the real gateway and a real Node handler: a
//! `payload = "1.0"` route gets the REST event and may answer with `multiValueHeaders`, a
//! 2.0 route's string result is the body unquoted, and the event's request id is the
//! gateway's while the handler's context has the Lambda one.

mod support;

use hyper::StatusCode;
use support::TestServer;

const HANDLER: &str = r#"
exports.rest = async (event, context) => ({
  statusCode: 200,
  multiValueHeaders: { "x-tag": event.multiValueQueryStringParameters.tag },
  body: JSON.stringify({
    version: event.version,
    httpMethod: event.httpMethod,
    resource: event.resource,
    path: event.path,
    pathParameters: event.pathParameters,
    query: event.queryStringParameters,
    resourcePath: event.requestContext.resourcePath,
    sourceIp: event.requestContext.identity.sourceIp,
    stageVariables: event.stageVariables,
    body: event.body,
    eventRequestId: event.requestContext.requestId,
    lambdaRequestId: context.awsRequestId,
  }),
});
exports.text = async () => "plain words";
"#;

const MANIFEST: &str = r#"
[functions.rest]
handler = "index.rest"
http = [{ method = "GET", path = "/items/{id}", payload = "1.0" }]

[functions.text]
handler = "index.text"
http = [{ method = "GET", path = "/text" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_routes_get_the_1_0_event_and_strings_are_bodies() {
    let server = TestServer::start().await;
    server
        .deploy_ok(&[("index.js", HANDLER), ("shoal.toml", MANIFEST)])
        .await;

    let reply = server.get("/items/42?tag=a&tag=b&q=x").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let tags: Vec<&str> = reply
        .headers
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["a", "b"]);
    let body = reply.json();
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["httpMethod"], "GET");
    assert_eq!(body["resource"], "/items/{id}");
    assert_eq!(body["resourcePath"], "/items/{id}");
    assert_eq!(body["path"], "/items/42");
    assert_eq!(body["pathParameters"]["id"], "42");
    assert_eq!(
        body["query"]["tag"], "b",
        "the last value, as REST APIs send"
    );
    assert_eq!(body["sourceIp"], "127.0.0.1");
    assert!(
        body["stageVariables"].is_null() && body["body"].is_null(),
        "{body}"
    );
    let gateway_id = reply.header("apigw-requestid").unwrap();
    assert_eq!(body["eventRequestId"], gateway_id);
    assert_ne!(body["lambdaRequestId"], gateway_id);

    let reply = server.get("/text").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "plain words");
    server.shutdown().await;
}

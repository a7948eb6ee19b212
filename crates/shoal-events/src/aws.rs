//! The stand-in AWS identity every event carries, and the ARNs built from it.
//!
//! There is no AWS account or region behind Shoal. Events still have `awsRegion`,
//! `account` and ARN fields, because handlers written for Lambda read them; they get one
//! fixed, obviously local identity so that values are stable and never mistaken for a
//! real account. This module only names things.

/// The region every Shoal event reports.
pub const REGION: &str = "local";

/// The account id every Shoal event reports.
pub const ACCOUNT_ID: &str = "000000000000";

/// `arn:aws:sqs:local:000000000000:<queue>`, as SQS events and `GetQueueAttributes`
/// report a queue.
pub fn sqs_queue_arn(queue: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue}")
}

/// `arn:aws:events:local:000000000000:rule/<rule>`, the `resources` entry of a Scheduled
/// Event.
pub fn schedule_rule_arn(rule: &str) -> String {
    format!("arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{rule}")
}

/// `arn:aws:lambda:local:000000000000:function:<function>:<qualifier>`, as the Lambda
/// destination record names the invoked function (the qualifier is a version or
/// `$LATEST`).
pub fn function_arn(function: &str, qualifier: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function}:{qualifier}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_use_the_local_identity() {
        assert_eq!(sqs_queue_arn("jobs"), "arn:aws:sqs:local:000000000000:jobs");
        assert_eq!(
            schedule_rule_arn("nightly"),
            "arn:aws:events:local:000000000000:rule/nightly"
        );
        assert_eq!(
            function_arn("hello", "$LATEST"),
            "arn:aws:lambda:local:000000000000:function:hello:$LATEST"
        );
    }
}

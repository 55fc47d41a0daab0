// The controller's state table: lease, fencing token, cooldown timestamps and decision history.
import * as aws from "@pulumi/aws";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

export function createStateTable(cfg: StackConfig, names: Names): aws.dynamodb.Table {
    return new aws.dynamodb.Table("state", {
        name: names.tableName,
        billingMode: "PAY_PER_REQUEST",
        hashKey: "cluster_id",
        rangeKey: "record",
        attributes: [
            { name: "cluster_id", type: "S" },
            { name: "record", type: "S" },
        ],
        ttl: { attributeName: "expires_at", enabled: true },
        pointInTimeRecovery: { enabled: true },
        // AWS-managed KMS key (aws/dynamodb): encrypted at rest, no key policy for us to manage.
        serverSideEncryption: { enabled: true },
        tags: baseTags(cfg, names, names.tableName),
    });
}

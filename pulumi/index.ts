// SmartScale on AWS: `pulumi up` creates everything listed in docs/deploy.md.
// The program lives in src/ (one module per concern); src/stack.ts wires them together.
import { createStack } from "./src/stack";

const { outputs } = createStack();

export const serverPublicIp = outputs.serverPublicIp;
export const serverPrivateIp = outputs.serverPrivateIp;
export const grafanaTunnel = outputs.grafanaTunnel;
export const asgName = outputs.asgName;
export const tableName = outputs.tableName;
export const clusterId = outputs.clusterId;
export const artifactBucket = outputs.artifactBucket;
export const agentSha256 = outputs.agentSha256;
export const controllerSha256 = outputs.controllerSha256;
export const grafanaAdminPassword = outputs.grafanaAdminPassword;

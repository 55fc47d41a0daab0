// The private, versioned artifacts bucket and what the instances download from it:
// the two binaries (uploaded from the local build paths in stack config) and the server's K3s
// manifest (monitoring HelmCharts, controller RBAC, dashboards). Every object's SHA-256 is computed
// here at deploy time and rendered into the UserData, which checks it before installing.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { dashboardFiles, readRepoFile, sha256File, sha256Text } from "./files";
import { Names, baseTags } from "./names";
import { renderTemplate } from "./render";

export interface Artifact {
    key: string;
    sha256: string;
    object: aws.s3.BucketObjectv2;
    /** The uploaded version; instances download exactly this version. */
    versionId: pulumi.Output<string>;
}

export interface Artifacts {
    bucket: aws.s3.Bucket;
    agent: Artifact;
    controller: Artifact;
    /** Manifests for /var/lib/rancher/k3s/server/manifests, by file name. */
    manifests: { fileName: string; artifact: Artifact }[];
    resources: pulumi.Resource[];
}

export const AGENT_KEY = "bin/smartscale-agent";
export const CONTROLLER_KEY = "bin/smartscale-controller";
export const MANIFEST_KEY_PREFIX = "manifests/";

/** userdata/manifests/smartscale.yaml with its placeholders filled and the dashboards ConfigMap appended. */
export function serverManifest(cfg: StackConfig): string {
    const base = renderTemplate(readRepoFile("userdata", "manifests", "smartscale.yaml"), {
        values: { GRAFANA_NODE_PORT: String(cfg.grafanaNodePort) },
        shell: false,
    });
    const lines = [
        "---",
        "# Grafana dashboards from dashboards/*.json (loaded by the Grafana chart's dashboardsConfigMaps).",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: smartscale-dashboards",
        "  namespace: monitoring",
        "data:",
    ];
    for (const d of dashboardFiles()) {
        // Re-serialise so the block scalar has no tabs or trailing spaces.
        const pretty = JSON.stringify(JSON.parse(d.json), null, 2);
        lines.push(`  ${d.name}: |-`);
        for (const l of pretty.split("\n")) {
            lines.push(`    ${l}`);
        }
    }
    return `${base.trimEnd()}\n${lines.join("\n")}\n`;
}

export function createArtifacts(cfg: StackConfig, names: Names): Artifacts {
    const bucket = new aws.s3.Bucket("artifacts", {
        bucketPrefix: `${names.prefix}-artifacts-`,
        // `pulumi destroy` must be able to remove the bucket with all object versions in it.
        forceDestroy: true,
        tags: baseTags(cfg, names),
    });
    const publicAccessBlock = new aws.s3.BucketPublicAccessBlock("artifacts", {
        bucket: bucket.id,
        blockPublicAcls: true,
        blockPublicPolicy: true,
        ignorePublicAcls: true,
        restrictPublicBuckets: true,
    });
    const ownership = new aws.s3.BucketOwnershipControls("artifacts", {
        bucket: bucket.id,
        rule: { objectOwnership: "BucketOwnerEnforced" },
    });
    const versioning = new aws.s3.BucketVersioning("artifacts", {
        bucket: bucket.id,
        versioningConfiguration: { status: "Enabled" },
    });
    const encryption = new aws.s3.BucketServerSideEncryptionConfiguration("artifacts", {
        bucket: bucket.id,
        rules: [{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" }, bucketKeyEnabled: true }],
    });
    const bucketReady = [publicAccessBlock, ownership, versioning, encryption];

    const upload = (name: string, key: string, source: pulumi.asset.Asset, sha256: string): Artifact => {
        const object = new aws.s3.BucketObjectv2(
            name,
            {
                bucket: bucket.id,
                key,
                source,
                contentType: "application/octet-stream",
                metadata: { sha256 },
                tags: baseTags(cfg, names),
            },
            // Versioning must be on before the upload, or the object has no version id to pin.
            { dependsOn: bucketReady },
        );
        return { key, sha256, object, versionId: object.versionId };
    };

    const agent = upload("agent-binary", AGENT_KEY, new pulumi.asset.FileAsset(cfg.agentBinaryPath), sha256File(cfg.agentBinaryPath));
    const controller = upload(
        "controller-binary",
        CONTROLLER_KEY,
        new pulumi.asset.FileAsset(cfg.controllerBinaryPath),
        sha256File(cfg.controllerBinaryPath),
    );
    const manifestText = serverManifest(cfg);
    const manifest = upload(
        "server-manifest",
        `${MANIFEST_KEY_PREFIX}smartscale.yaml`,
        new pulumi.asset.StringAsset(manifestText),
        sha256Text(manifestText),
    );

    return {
        bucket,
        agent,
        controller,
        manifests: [{ fileName: "smartscale.yaml", artifact: manifest }],
        resources: [bucket, ...bucketReady, agent.object, controller.object, manifest.object],
    };
}

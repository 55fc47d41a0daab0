// The private, versioned artifacts bucket and what the instances download from it through the
// VPC's S3 endpoint: the agent and controller binaries (uploaded from the local builds), the
// pinned k3s binary and install script (checked against pulumi/k3s-releases.json before upload),
// and the server's K3s manifest. Every object's SHA-256 is known here at deploy time and the
// instances check it before installing; they fetch exact object versions.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";
import { sha256File, sha256Text } from "./files";
import { K3sFiles } from "./k3s";
import { Names, baseTags } from "./names";

export interface Artifact {
    key: string;
    sha256: pulumi.Output<string>;
    object: aws.s3.BucketObjectv2;
    /** The uploaded version; instances download exactly this version. */
    versionId: pulumi.Output<string>;
}

export interface Artifacts {
    bucket: aws.s3.Bucket;
    agent: Artifact;
    controller: Artifact;
    k3sBinary: Artifact;
    k3sInstallScript: Artifact;
    /** Manifests for /var/lib/rancher/k3s/server/manifests, by file name. */
    manifests: Record<string, Artifact>;
    resources: pulumi.Resource[];
}

export const AGENT_KEY = "bin/smartscale-agent";
export const CONTROLLER_KEY = "bin/smartscale-controller";
export const MANIFEST_KEY_PREFIX = "manifests/";

export function createArtifacts(
    cfg: StackConfig,
    names: Names,
    k3s: K3sFiles,
    manifestText: pulumi.Output<string>,
): Artifacts {
    const bucket = new aws.s3.Bucket("artifacts", {
        bucketPrefix: names.bucketPrefix,
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

    const upload = (name: string, key: string, source: pulumi.Input<pulumi.asset.Asset>, sha256: pulumi.Input<string>): Artifact => {
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
        return { key, sha256: pulumi.output(sha256), object, versionId: object.versionId };
    };
    const file = (name: string, key: string, path: string, sha256 = sha256File(path)) =>
        upload(name, key, new pulumi.asset.FileAsset(path), sha256);

    const agent = file("agent-binary", AGENT_KEY, cfg.agentBinaryPath);
    const controller = file("controller-binary", CONTROLLER_KEY, cfg.controllerBinaryPath);
    const k3sBinary = file("k3s-binary", `k3s/${k3s.version}/k3s`, k3s.binary.path, k3s.binary.sha256);
    const k3sInstallScript = file("k3s-install-script", `k3s/${k3s.version}/install.sh`, k3s.installScript.path, k3s.installScript.sha256);
    const manifest = upload(
        "server-manifest",
        `${MANIFEST_KEY_PREFIX}smartscale.yaml`,
        manifestText.apply((t) => new pulumi.asset.StringAsset(t)),
        manifestText.apply(sha256Text),
    );

    return {
        bucket,
        agent,
        controller,
        k3sBinary,
        k3sInstallScript,
        manifests: { "smartscale.yaml": manifest },
        resources: [bucket, ...bucketReady, agent.object, controller.object, k3sBinary.object, k3sInstallScript.object, manifest.object],
    };
}

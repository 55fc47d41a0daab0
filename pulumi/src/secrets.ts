// The K3s tokens and the Grafana admin password, only ever in Secrets Manager.
//
// - Server token (RandomPassword): whoever has it has full administrator access to the cluster
//   (K3s docs, "k3s token"). Only the server's role can read it.
// - Agent token: what workers join with. The server generates its password at first boot, K3s
//   writes the token in the secure format `K10<CA hash>::node:<password>` (the CA hash lets a
//   joining agent authenticate the server before it sends credentials), and the server stores it
//   here; Pulumi creates the secret without a value, so the token is not in the Pulumi state.
//   Workers' roles can read only this one.
// - Grafana admin password (RandomPassword).
// None of them is rendered into UserData, a process argument or a world-readable file.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";
import { StackConfig } from "./config";
import { Names, baseTags } from "./names";

export interface Secrets {
    serverTokenSecret: aws.secretsmanager.Secret;
    agentTokenSecret: aws.secretsmanager.Secret;
    grafanaSecret: aws.secretsmanager.Secret;
    /** The Grafana admin password, a Pulumi secret output (stack output for the user). */
    grafanaPassword: pulumi.Output<string>;
    resources: pulumi.Resource[];
}

export function createSecrets(cfg: StackConfig, names: Names): Secrets {
    const secret = (id: string, name: string, what: string) =>
        new aws.secretsmanager.Secret(id, {
            name,
            description: `${what} of SmartScale cluster ${cfg.clusterId}`,
            // Nothing to recover after a destroy, and a pending deletion would block re-creating the name.
            recoveryWindowInDays: 0,
            tags: baseTags(cfg, names),
        });

    const token = new random.RandomPassword("k3s-token", { length: 48, special: false });
    const serverTokenSecret = secret("k3s-server-token", names.serverTokenSecretName, "K3s server token (cluster admin; server only)");
    const tokenVersion = new aws.secretsmanager.SecretVersion("k3s-server-token", {
        secretId: serverTokenSecret.id,
        secretString: token.result,
    });
    const agentTokenSecret = secret("k3s-agent-token", names.agentTokenSecretName, "K3s agent token (workers join with it; written by the server)");

    const grafana = new random.RandomPassword("grafana-admin", { length: 32, special: false });
    const grafanaSecret = secret("grafana-admin", names.grafanaSecretName, "Grafana admin password");
    const grafanaVersion = new aws.secretsmanager.SecretVersion("grafana-admin", {
        secretId: grafanaSecret.id,
        secretString: grafana.result,
    });

    return {
        serverTokenSecret,
        agentTokenSecret,
        grafanaSecret,
        grafanaPassword: pulumi.secret(grafana.result),
        resources: [token, serverTokenSecret, tokenVersion, agentTokenSecret, grafana, grafanaSecret, grafanaVersion],
    };
}

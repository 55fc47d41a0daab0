// Fixed hourly costs for the Cost dashboard: the server's on-demand price and the gp3 price per
// GiB-month from the AWS Price List API (GetProducts, served in us-east-1), looked up at deploy
// time; config keys override them. If the lookup fails (no pricing:GetProducts permission, no
// single matching product), a documented fallback is used and labelled as such, with a warning:
// a missing price must not stop a deployment. Workers are priced by the controller itself, per
// node, from the same API and DescribeSpotPriceHistory.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { StackConfig } from "./config";

export interface Price {
    dollars: number;
    /** `config`, `price_list` or `fallback` (a dashboard label). */
    source: string;
}

export interface FixedPrices {
    serverHourly: pulumi.Output<Price>;
    ebsGibMonth: pulumi.Output<Price>;
    publicIpv4Hourly: pulumi.Output<Price>;
}

/** us-east-1 list prices, used only when the Price List API cannot be asked. */
export const FALLBACK = { serverHourly: 0.0416, ebsGibMonth: 0.08 };

/** The first positive USD price of the product's on-demand terms (GetProducts' PriceList entry). */
export function onDemandUsd(priceListJson: string): number {
    const product = JSON.parse(priceListJson);
    for (const term of Object.values<any>(product?.terms?.OnDemand ?? {})) {
        for (const dim of Object.values<any>(term?.priceDimensions ?? {})) {
            const usd = Number(dim?.pricePerUnit?.USD);
            if (usd > 0) return usd;
        }
    }
    throw new Error("no on-demand USD price in the product");
}

function lookup(
    what: string,
    filters: Record<string, string>,
    provider: aws.Provider,
    fallback: number,
): pulumi.Output<Price> {
    const answer = aws.pricing
        .getProduct(
            { serviceCode: "AmazonEC2", filters: Object.entries(filters).map(([field, value]) => ({ field, value })) },
            { provider },
        )
        .then((r) => ({ dollars: onDemandUsd(r.result), source: "price_list" }))
        .catch((e: Error) => {
            pulumi.log.warn(`Price List lookup of the ${what} failed (${e.message}); the Cost dashboard uses ${fallback} until it works`);
            return { dollars: fallback, source: "fallback" };
        });
    return pulumi.output(answer);
}

export function fixedPrices(cfg: StackConfig): FixedPrices & { resources: pulumi.Resource[] } {
    const resources: pulumi.Resource[] = [];
    let provider: aws.Provider | undefined;
    const pricing = () => {
        if (!provider) {
            provider = new aws.Provider("pricing", { region: "us-east-1" });
            resources.push(provider);
        }
        return provider;
    };
    const configured = (dollars: number) => pulumi.output<Price>({ dollars, source: "config" });
    const serverHourly =
        cfg.serverHourlyPrice !== undefined
            ? configured(cfg.serverHourlyPrice)
            : lookup(
                  `${cfg.serverInstanceType} on-demand price`,
                  {
                      instanceType: cfg.serverInstanceType,
                      regionCode: cfg.region,
                      operatingSystem: "Linux",
                      tenancy: "Shared",
                      preInstalledSw: "NA",
                      licenseModel: "No License required",
                      capacitystatus: "Used",
                      marketoption: "OnDemand",
                  },
                  pricing(),
                  FALLBACK.serverHourly,
              );
    const ebsGibMonth =
        cfg.ebsGibMonthPrice !== undefined
            ? configured(cfg.ebsGibMonthPrice)
            : lookup("gp3 price", { productFamily: "Storage", volumeApiName: "gp3", regionCode: cfg.region }, pricing(), FALLBACK.ebsGibMonth);
    return {
        serverHourly,
        ebsGibMonth,
        publicIpv4Hourly: configured(cfg.publicIpv4HourlyPrice),
        resources,
    };
}

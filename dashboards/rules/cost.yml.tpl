# Cost recording rules for the Cost dashboard, shipped with the Prometheus chart
# (serverFiles.recording_rules.yml). pulumi/src/monitoring.ts fills in the placeholders at deploy
# time: the server's on-demand price and the gp3 price from the AWS Price List API (or config),
# AWS's public IPv4 price, and the root volume sizes. Workers are priced by the controller, per
# node. No rule reads another one, so promtool can backfill them (dashboards/test_queries.py).
# Tested by dashboards/rules/cost.test.yml.
groups:
  - name: smartscale-cost
    interval: 1m
    rules:
      # $/hour of each worker node at the price the controller applies to it: per node when the
      # controller exports smartscale_node_hourly_cost_dollars (real spot price of its zone, real
      # on-demand price of its type), else its group's price for its instance type and lifecycle.
      - record: smartscale:node_hourly_cost_dollars
        expr: |
          max by (node, node_group, instance_type, capacity_type, zone, price_source) (smartscale_node_hourly_cost_dollars)
          or on (node)
          label_replace(
            max by (node, node_group, instance_type, capacity_type, zone) (
              smartscale_node_info
              * on (node_group, instance_type, capacity_type) group_left
              max by (node_group, instance_type, capacity_type) (smartscale_node_hourly_price_dollars)
            ),
            "price_source", "group_price", "", ""
          )

      # What is not a worker's compute: the server, its disk and address, and every worker
      # instance's disk and address (booting instances too: they are billed from launch).
      - record: smartscale:infra_hourly_cost_dollars
        expr: vector(@@SERVER_HOURLY@@)
        labels: {item: server, instance_type: "@@SERVER_INSTANCE_TYPE@@", price_source: "@@SERVER_PRICE_SOURCE@@"}
      - record: smartscale:infra_hourly_cost_dollars
        expr: vector(@@SERVER_EBS_HOURLY@@)
        labels: {item: server_ebs, volume: "@@SERVER_VOLUME_GIB@@ GiB gp3", price_source: "@@EBS_PRICE_SOURCE@@"}
      - record: smartscale:infra_hourly_cost_dollars
        expr: vector(@@IPV4_HOURLY@@)
        labels: {item: server_ipv4, price_source: "@@IPV4_PRICE_SOURCE@@"}
      - record: smartscale:infra_hourly_cost_dollars
        expr: max by (node_group) (smartscale_nodes{state="current"}) * @@WORKER_EBS_HOURLY@@
        labels: {item: worker_ebs, volume: "@@WORKER_VOLUME_GIB@@ GiB gp3", price_source: "@@EBS_PRICE_SOURCE@@"}
      - record: smartscale:infra_hourly_cost_dollars
        expr: max by (node_group) (smartscale_nodes{state="current"}) * @@IPV4_HOURLY@@
        labels: {item: worker_ipv4, price_source: "@@IPV4_PRICE_SOURCE@@"}

      # What one worker of a static fleet would cost: the group's cheapest on-demand type plus its
      # disk and address (the baseline of "saved against a static fleet sized for the peak").
      - record: smartscale:static_worker_hourly_price_dollars
        expr: min by (node_group) (smartscale_node_hourly_price_dollars{capacity_type="on-demand"}) + @@WORKER_OVERHEAD_HOURLY@@

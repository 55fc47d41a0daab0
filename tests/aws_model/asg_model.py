"""Auto Scaling model patched into moto 5.2.5.

moto keeps lifecycle hooks but never uses them: instances go straight to InService or
vanish, every instance lands in the first subnet, spot overrides are ignored, several
actions answer an unknown group with an HTML 500, and suspended processes, scale-in
protection of pending work, AZ rebalancing, Capacity Rebalancing and launch failures do
not exist. This module replaces the few moto functions where those decisions are made,
so the rest of moto (EC2 state, tags, ELB registration, serialisation) keeps working.

The group converges in `reconcile` (called after every change and by the 0.2 s ticker):
Capacity Rebalancing replacements, then launches/terminations towards the desired
capacity, then AZ rebalancing. Instances launched ahead of a termination (rebalancing)
are counted on top of the desired capacity until they are InService.

Everything here runs under LOCK; the server takes it around every Auto Scaling, EC2 and
DynamoDB request and in its background ticker.
"""

from __future__ import annotations

import ipaddress
import json
import math
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.sax.saxutils import escape

import botocore.session
from moto.autoscaling import models as asm
from moto.autoscaling import responses as asr
from moto.autoscaling.exceptions import AutoscalingClientError, ValidationError
from moto.core.exceptions import ServiceException
from moto.ec2.exceptions import InvalidSubnetIdError
from werkzeug.exceptions import HTTPException

from rules import RuleBook

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
# States that count towards the desired capacity (Terminating:* and Standby do not).
LIVE = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
# Warm pool states that count towards the warm pool's size (Warmed:Terminating* do not).
WARMED_LIVE = ("Warmed:Pending", "Warmed:Pending:Wait", "Warmed:Pending:Proceed",
               "Warmed:Stopped", "Warmed:Running", "Warmed:Hibernated")
# Finished warming: the only warm pool instances a scale-out takes.
WARMED_READY = ("Warmed:Stopped", "Warmed:Running", "Warmed:Hibernated")
POOL_STATES = ("Stopped", "Running", "Hibernated")
MAX_GLOBAL_TIMEOUT = 48 * 3600
# Failed launches in a zone are retried after 10 s, doubling per failure, at most 5 min
# (AWS documents retries, not their schedule; this is the model's).
RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 300.0
PROTECTED_NOTE = "Could not scale to desired capacity because all remaining instances are protected from scale-in."
IN_PROGRESS = "Scaling activity {} is in progress and blocks this action"

LOCK = threading.RLock()
_offset = 0.0
# instance id -> moto InstanceState; keeps instances that already left their group,
# so the control endpoint can still answer "Terminated" for them.
REGISTRY: dict[str, asm.InstanceState] = {}
LAUNCH_FAILURES = RuleBook("launch-failure")
AUTOSCALING_FAULTS = RuleBook("autoscaling-fault")


@dataclass
class NextIp:
    """A private IP the next launch of a group (or in a zone) gets."""

    ip: str
    group: str | None
    zone: str | None
    region: str | None

    def to_json(self) -> dict:
        return {"ip": self.ip, "group": self.group, "zone": self.zone, "region": self.region}


NEXT_IPS: list[NextIp] = []


# ---------------------------------------------------------------- clock

def now() -> float:
    return time.time() + _offset


def clock() -> dict:
    return {"now": now(), "offset": _offset}


def advance(seconds: float) -> None:
    global _offset
    _offset += seconds
    apply_due()


def wipe() -> None:
    """Forget the model (after moto itself was reset)."""
    global _offset
    _offset = 0.0
    REGISTRY.clear()
    LAUNCH_FAILURES.clear()
    AUTOSCALING_FAULTS.clear()
    NEXT_IPS.clear()


def _ts(t: float | None = None) -> datetime:
    return datetime.fromtimestamp(now() if t is None else t, tz=timezone.utc)


def _iso(t: float | None = None) -> str:
    return _ts(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(t: float | None = None) -> str:
    return _ts(t).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------- helpers

@dataclass
class Action:
    """One pending lifecycle action: an instance waiting on one hook."""

    hook_name: str
    transition: str
    default_result: str
    heartbeat_timeout: int
    token: str
    deadline: float  # heartbeat deadline, moved by RecordLifecycleActionHeartbeat
    global_deadline: float  # fixed at start: min(48 h, 100 x HeartbeatTimeout)

    def due(self, t: float) -> bool:
        return t >= min(self.deadline, self.global_deadline)


def all_backends():
    for account in list(dict.values(asm.autoscaling_backends)):
        yield from list(dict.values(account))


def _live(group) -> list:
    return [s for s in group.instance_states if s.lifecycle_state in LIVE]


def _hooks(group, transition: str) -> list:
    return [
        h
        for h in group.autoscaling_backend.lifecycle_hooks.values()
        if h.auto_scaling_group_name == group.name and h.lifecycle_transition == transition
    ]


def _group_of(backend, instance_id: str):
    for group in backend.autoscaling_groups.values():
        for st in group.instance_states:
            if st.instance.id == instance_id:
                return group, st
    return None, None


def _suspended(group) -> set[str]:
    return set(group._suspended_processes)


def _activity(group, description: str, cause: str, status: str = "InProgress", details: dict | None = None):
    act = asm.Activity(description, cause, group, start_time=_ts(), end_time=None, status_code=status)
    act.end_time = None  # moto stamps it at creation; AWS only sets it when the activity ends
    act.progress = 0 if status != "Successful" else 100
    if details:
        act.details = json.dumps(details)
    backend = group.autoscaling_backend
    if not hasattr(backend, "ss_activities"):
        backend.ss_activities = []
    backend.ss_activities.append(act)
    return act


def _finish_activity(act, status: str = "Successful", message: str | None = None) -> None:
    if act is None:
        return
    act.status_code = status
    act.end_time = _ts()
    act.progress = 100
    if message:
        act.status_message = message


def _in_progress(group):
    """The newest activity of the group that has not ended, if any."""
    for act in reversed(getattr(group.autoscaling_backend, "ss_activities", [])):
        if act.auto_scaling_group is group and act.end_time is None:
            return act
    return None


def _refresh_load_balancers(group) -> None:
    backend = group.autoscaling_backend
    if group.name in backend.autoscaling_groups:
        backend.update_attached_elbs(group.name)
        backend.update_attached_target_groups(group.name)


def _start_wait(group, st, hooks, origin: str | None = None, destination: str | None = None) -> None:
    t = now()
    st.actions = {}
    for h in hooks:
        action = Action(
            hook_name=h.name,
            transition=h.lifecycle_transition,
            default_result=h.default_result,
            heartbeat_timeout=h.heartbeat_timeout,
            token=str(uuid.uuid4()),
            deadline=t + h.heartbeat_timeout,
            global_deadline=t + min(MAX_GLOBAL_TIMEOUT, 100 * h.heartbeat_timeout),
        )
        st.actions[h.name] = action
        if h.notification_target_arn:
            launching = h.lifecycle_transition == LAUNCHING
            message = {
                "Origin": origin or ("EC2" if launching else "AutoScalingGroup"),
                "Destination": destination or ("AutoScalingGroup" if launching else "EC2"),
                "LifecycleHookName": h.name,
                "AccountId": group.account_id,
                "RequestId": str(uuid.uuid4()),
                "LifecycleTransition": h.lifecycle_transition,
                "AutoScalingGroupName": group.name,
                "Service": "AWS Auto Scaling",
                "Time": _iso_ms(t),
                "EC2InstanceId": st.instance.id,
                "LifecycleActionToken": action.token,
            }
            if getattr(h, "notification_metadata", None):
                message["NotificationMetadata"] = h.notification_metadata
            _send(h.notification_target_arn, message)


def _send(arn: str, message: dict) -> bool:
    """Deliver a lifecycle notification; SQS queues are the only target kind modelled."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        return False
    from moto.sqs.models import sqs_backends

    try:
        sqs_backends[parts[4]][parts[3]].send_message(parts[5], json.dumps(message))
        return True
    except (KeyError, ServiceException, HTTPException):  # unknown region, QueueDoesNotExist, ...
        return False


def register(st, region: str) -> None:
    st.region = region
    REGISTRY[st.instance.id] = st


# ---------------------------------------------------------------- instance attributes

def _market(st) -> str:
    return getattr(st, "market", "on-demand")


def _protected(st) -> bool:
    # "Instance scale-in protection starts when the instance state is InService."
    return bool(st.protected_from_scale_in) and st.lifecycle_state == "InService"


def _launched_at(st) -> float:
    t = getattr(st, "ss_launched_at", None)
    if t is None:  # attached by moto (AttachInstances): its EC2 launch time
        t = st.instance.launch_time.replace(tzinfo=timezone.utc).timestamp()
    return t


def _surplus(st) -> bool:
    """Launched ahead of a termination (rebalancing) and not in service yet."""
    return getattr(st, "ss_purpose", None) is not None and st.lifecycle_state != "InService" and st.lifecycle_state in LIVE


def _replacement_of(st):
    """The live Capacity Rebalancing replacement launched for `st`, if any."""
    rid = getattr(st, "ss_replaced_by", None)
    new = REGISTRY.get(rid) if rid else None
    return new if new is not None and new.lifecycle_state in LIVE else None


def _replacement_ready(st) -> bool:
    new = _replacement_of(st)
    return new is not None and new.lifecycle_state == "InService"


def _target(group) -> int:
    """Live instances the group aims for: desired capacity plus instances launched ahead of
    a rebalancing termination (still launching, or already replacing an at-risk instance)."""
    extra = sum(1 for s in _live(group) if _surplus(s) or _replacement_ready(s))
    return (group.desired_capacity or 0) + extra


def _margin(group) -> int:
    # Rebalancing may exceed MaxSize "by a margin of 10 percent or one instance, whichever is greater".
    return max(1, math.ceil((group.max_size or 0) * 0.1))


# ---------------------------------------------------------------- placement and purchase option

def _zones(group) -> list[tuple[str, str | None]]:
    """(availability zone, subnet id) choices of the group, in configured order."""
    if group.vpc_zone_identifier:
        ec2 = group.autoscaling_backend.ec2_backend
        ids = [s.strip() for s in group.vpc_zone_identifier.split(",") if s.strip()]
        return [(ec2.get_subnet(i).availability_zone, i) for i in ids]
    return [(az, None) for az in group.availability_zones]


def _zone_names(group) -> list[str]:
    return list(dict.fromkeys(az for az, _ in _zones(group)))


def _subnet_for(group, az: str, subnet: str | None):
    """The subnet a launch into `az` uses: the configured one, else the zone's default subnet."""
    ec2 = group.autoscaling_backend.ec2_backend
    if subnet:
        return ec2.get_subnet(subnet)
    return ec2.get_default_subnets().get(az)


def _backoff(group) -> dict[str, dict]:
    if not hasattr(group, "ss_backoff"):
        group.ss_backoff = {}
    return group.ss_backoff


def _zone_ready(group, az: str) -> bool:
    entry = _backoff(group).get(az)
    return entry is None or entry["retry_at"] <= now()


def _zone_order(group, prefer: str | None = None, among: list | None = None) -> list[tuple[str, str | None]]:
    # AWS balances across AZs: launch into the AZ (then subnet) with the fewest live instances
    # (warm pool launches: the fewest warm pool instances), skipping zones whose last launch
    # failed until their retry time.
    live = _live(group) if among is None else among
    per_az = Counter(s.instance.placement.zone for s in live)
    per_subnet = Counter(s.instance.subnet_id for s in live)
    choices = [z for z in _zones(group) if _zone_ready(group, z[0])]
    choices.sort(key=lambda z: (z[0] != prefer, per_az[z[0]], per_subnet[z[1]]))
    return choices


def _distribution(group) -> tuple[int, int] | None:
    policy = group.mixed_instances_policy
    if not policy:
        return None
    dist = policy.get("InstancesDistribution") or {}
    base = int(dist.get("OnDemandBaseCapacity") or 0)
    pct = dist.get("OnDemandPercentageAboveBaseCapacity")
    return base, 100 if pct is None else int(pct)


def _on_demand_target(group, desired: int) -> int:
    """How many of `desired` instances should be on-demand (fractions round up, to on-demand)."""
    base, pct = _distribution(group)
    if desired <= base:
        return desired
    return base + math.ceil((desired - base) * pct / 100)


def _overrides(group) -> list[str]:
    if not group.mixed_instances_policy:
        return []
    return [
        o["InstanceType"]
        for o in (group.mixed_instances_policy.get("LaunchTemplate") or {}).get("Overrides") or []
        if o.get("InstanceType")
    ]


def _pick_types_and_market(group, avoid: str | None = None) -> tuple[list[str], str]:
    """Instance types to try, in order, and the purchase option of the next launch."""
    overrides = _overrides(group)
    if overrides:  # round-robin over the overrides, as a diversified allocation would
        turn = getattr(group, "ss_turn", 0)
        group.ss_turn = turn + 1
        first = overrides[turn % len(overrides)]
        types = [first] + [t for t in overrides if t != first]
        if avoid in types and len(types) > 1:  # a replacement prefers another Spot pool
            types = [t for t in types if t != avoid] + [avoid]
    else:
        types = [group.instance_type]
    market = "on-demand"
    if _distribution(group) is not None:
        on_demand = sum(1 for s in _live(group) if _market(s) == "on-demand")
        if on_demand >= _on_demand_target(group, group.desired_capacity or 0):
            market = "spot"
    return types, market


def _launch_spec(group) -> tuple:
    """What the next instance is launched from: ("lc", name) or ("lt", template id, version)."""
    if group.launch_config:
        return ("lc", group.launch_config.name)
    template = group.ec2_launch_template
    if template is None:
        return ("none",)
    version = template.get_version(getattr(group, "launch_template_version", None) or "$Default")
    return ("lt", template.id, int(version.number))


# ---------------------------------------------------------------- private IPs

def _ip_in_use(subnet, ip: str):
    return subnet._subnet_ips.get(ip)


def _next_ip(group, az: str, subnet_id: str | None) -> NextIp | None:
    """The pending private IP for a launch of `group` into (az, subnet), if one applies."""
    region = group.autoscaling_backend.region_name
    subnet = _subnet_for(group, az, subnet_id)
    if subnet is None:
        return None
    for entry in NEXT_IPS:
        mine = (entry.group == group.name and entry.region in (None, region)) or entry.zone == az
        if mine and ipaddress.ip_address(entry.ip) in subnet.cidr and not _ip_in_use(subnet, entry.ip):
            return entry
    return None


def _ip_zones(group) -> list[tuple[str, str | None]]:
    """The zone choices that a pending private IP pins the next launch to (empty: none pending)."""
    for az, subnet in _zones(group):
        if _zone_ready(group, az) and _next_ip(group, az, subnet):
            return [(az, subnet)]
    return []


def _release_ip(group, st) -> None:
    # moto frees a terminated instance's IP only when the object is garbage-collected (never,
    # here). Free it now, without queueing it for automatic reuse, so only an explicit
    # next-private-ip gives it out again.
    instance = st.instance
    try:
        subnet = group.autoscaling_backend.ec2_backend.get_subnet(instance.subnet_id)
    except InvalidSubnetIdError:
        return
    for ip in list(getattr(instance, "_private_ips", ())):
        subnet._subnet_ips.pop(ip, None)
    if hasattr(instance, "_private_ips"):
        instance._private_ips.clear()


def groups_named(name: str, region: str | None) -> list:
    return [
        g for backend in all_backends() for n, g in backend.autoscaling_groups.items()
        if n == name and region in (None, backend.region_name)
    ]


def _subnets_of(group) -> list:
    return [s for s in (_subnet_for(group, az, sn) for az, sn in _zones(group)) if s is not None]


def set_next_ip(ip: str, group_name: str | None, zone: str | None, region: str | None) -> NextIp:
    """Queue `ip` for the next launch of a group or in a zone; ValueError says what is wrong."""
    address = ipaddress.ip_address(ip)
    if group_name is not None:
        groups = groups_named(group_name, region)
        if not groups:
            where = f" in {region}" if region else ""
            raise ValueError(f"no Auto Scaling group named {group_name}{where}")
        if len(groups) > 1:
            regions = ", ".join(sorted(g.autoscaling_backend.region_name for g in groups))
            raise ValueError(f"group {group_name} exists in regions {regions}: give \"region\"")
        group = groups[0]
        subnets = _subnets_of(group)
        region = group.autoscaling_backend.region_name
        scope = f"group {group_name}'s subnets"
    else:
        region = zone[:-1]
        subnets = [
            s for b in all_backends() if b.region_name == region
            for s in b.ec2_backend.describe_subnets() if s.availability_zone == zone
        ]
        scope = f"the subnets of {zone}"
    home = next((s for s in subnets if address in s.cidr), None)
    if home is None:
        listed = ", ".join(f"{s.id} {s.cidr_block} ({s.availability_zone})" for s in subnets) or "none"
        raise ValueError(f"{ip} is in none of {scope}: {listed}")
    holder = _ip_in_use(home, ip)
    if holder is not None:
        raise ValueError(f"{ip} is in use by {getattr(holder, 'id', holder)}")
    entry = NextIp(ip=str(address), group=group_name, zone=zone, region=region)
    NEXT_IPS.append(entry)
    return entry


# ---------------------------------------------------------------- launch failures

def _region_zones(group) -> list[str]:
    return sorted(z.name for z in group.autoscaling_backend.ec2_backend.describe_availability_zones())


def _failure_text(group, rule, az: str, instance_type: str, market: str) -> str:
    """EC2's error message for a failed launch, as the scaling activity reports it."""
    if rule.message:
        return rule.message
    region = group.autoscaling_backend.region_name
    others = [
        z for z in _region_zones(group)
        if z != az and LAUNCH_FAILURES.peek(_launch_context(group, z, instance_type, market, region)) is None
    ]
    choosing = f" or choosing {', '.join(others)}" if others else ""
    if rule.code == "InsufficientInstanceCapacity" and market == "spot":
        return "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that matches your request."
    if rule.code == "InsufficientInstanceCapacity":
        return (
            f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you requested "
            f"({az}). Our system will be working on provisioning additional capacity. You can currently get "
            f"{instance_type} capacity by not specifying an Availability Zone in your request{choosing}."
        )
    if rule.code == "Unsupported":
        return (
            f"Your requested instance type ({instance_type}) is not supported in your requested Availability Zone "
            f"({az}). Please retry your request by not specifying an Availability Zone{choosing}."
        )
    running = sum(1 for s in REGISTRY.values() if s.instance.state == "running" and getattr(s, "region", None) == region)
    return (
        f"You have requested more instances (1) than your current instance limit of {running} allows for the "
        "specified instance type. Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
        "adjustment to this limit."
    )


LAUNCH_FAILURE_CODES = ("InsufficientInstanceCapacity", "Unsupported", "InstanceLimitExceeded")


def _launch_context(group, az: str, instance_type: str, market: str, region: str) -> dict:
    return {"group": group.name, "region": region, "zone": az, "instance_type": instance_type, "market": market}


def _record_failure(group, az: str, subnet, text: str, cause: str) -> None:
    """A Failed launch activity, and the zone's retry time pushed back."""
    message = f"{text} Launching EC2 instance failed."
    act = _activity(group, f"Launching a new EC2 instance.  Status Reason: {message}", cause,
                    details={"Subnet ID": getattr(subnet, "id", None), "Availability Zone": az})
    _finish_activity(act, "Failed", message)
    entry = _backoff(group).setdefault(az, {"failures": 0, "retry_at": 0.0})
    entry["failures"] += 1
    entry["retry_at"] = now() + min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (entry["failures"] - 1))


# ---------------------------------------------------------------- launch / terminate

def _launch_one(group, cause: str, *, zone: str | None = None, prefer: str | None = None,
                purpose: str | None = None, replaces=None, pool: bool = False):
    """Launch one instance; None if every zone tried failed (each failure is an activity).

    zone: only that zone (AZ rebalancing); prefer: that zone first (a replacement);
    pool: launch into the warm pool. A launch into the group takes a warmed instance from
    the warm pool first (not for a Capacity Rebalancing replacement, nor when a private IP
    is pinned for the next launch).
    """
    region = group.autoscaling_backend.region_name
    choices = _ip_zones(group) if zone is None else []
    if not pool and replaces is None and not choices:
        st = _take_from_pool(group, cause, zone=zone, purpose=purpose)
        if st is not None:
            return st
    if not choices:
        choices = _zone_order(group, prefer, among=_pool_members(group) if pool else None)
        if zone is not None:
            choices = [c for c in choices if c[0] == zone][:1]
    types, market = _pick_types_and_market(group, avoid=replaces.instance.instance_type if replaces else None)
    if replaces is not None:
        market = "spot"  # Capacity Rebalancing launches a Spot Instance
    if pool:
        market = "on-demand"  # the model keeps Spot out of warm pools
    for az, subnet_id in choices:
        subnet = _subnet_for(group, az, subnet_id)
        failed = None
        for instance_type in types:
            rule = LAUNCH_FAILURES.take(_launch_context(group, az, instance_type, market, region))
            if rule is None:
                return _run(group, az, subnet, instance_type, market, cause, purpose, replaces, pool)
            failed = failed or (rule, instance_type)  # a fleet tries the other pools in the zone
        _record_failure(group, az, subnet, _failure_text(group, failed[0], az, failed[1], market), cause)
    return None


def _run(group, az: str, subnet, instance_type: str, market: str, cause: str, purpose, replaces, pool: bool = False):
    backend = group.autoscaling_backend
    tags = group.get_propagated_tags()
    tags[asm.ASG_NAME_TAG] = group.name
    tags.update(group.instance_tags)
    launch_template = None
    if group.ec2_launch_template:
        launch_template = {"LaunchTemplateId": group.ec2_launch_template.id}
    pinned = _next_ip(group, az, subnet.id) if subnet is not None else None
    reservation = backend.ec2_backend.run_instances(
        group.image_id,
        1,
        group.user_data,
        group.security_groups,
        instance_type=instance_type,
        tags={"instance": tags},
        placement=az,
        subnet_id=subnet.id if subnet is not None else None,
        private_ip=pinned.ip if pinned else None,
        launch_config=group.launch_config,
        launch_template=launch_template,
        is_instance_type_default=False,
        associate_public_ip=group.launch_config.associate_public_ip_address if group.launch_config else None,
        lifecycle="spot" if market == "spot" else None,  # EC2 DescribeInstances: InstanceLifecycle=spot
    )
    if pinned:
        NEXT_IPS.remove(pinned)
    instance = reservation.instances[0]
    # Set afterwards: passed to run_instances it trips moto's offering tables for newer regions.
    instance.region_name = backend.region_name  # used in the instance's DNS names
    instance.autoscaling_group = group
    instance.launch_time = _ts().replace(tzinfo=None)  # model time (moto keeps naive UTC)
    _backoff(group).pop(az, None)
    st = asm.InstanceState(
        instance, lifecycle_state="Pending", protected_from_scale_in=group.new_instances_protected_from_scale_in
    )
    st.market = market
    st.actions = {}
    st.ss_launched_at = now()
    st.ss_launch = _launch_spec(group)
    st.ss_purpose = purpose
    if replaces is not None:
        replaces.ss_replaced_by = instance.id
    details = {"Subnet ID": instance.subnet_id, "Availability Zone": az}
    if pool:
        st.lifecycle_state = "Warmed:Pending"
        st.ss_pool_state = group.warm_pool.pool_state
        _warm(group).append(st)
        register(st, backend.region_name)
        st.activity = _activity(group, f"Launching a new EC2 instance into warm pool: {instance.id}", cause, details=details)
        _enter_pool(group, st, LAUNCHING, origin="EC2")
        return st
    group.instance_states.append(st)
    register(st, backend.region_name)
    st.activity = _activity(group, f"Launching a new EC2 instance: {instance.id}", cause, details=details)
    hooks = _hooks(group, LAUNCHING)
    if hooks:
        st.lifecycle_state = "Pending:Wait"
        st.activity.status_code = "MidLifecycleAction"
        _start_wait(group, st, hooks)
    else:
        _enter_service(group, st)
    return st


def _enter_service(group, st) -> None:
    st.actions = {}
    st.lifecycle_state = "InService"
    _finish_activity(getattr(st, "activity", None))
    _refresh_load_balancers(group)


def _begin_termination(group, st, cause: str, use_hooks: bool = True):
    st.actions = {}  # a pending launch action is cancelled by the termination
    launch = getattr(st, "activity", None)
    if launch is not None and launch.end_time is None:
        _finish_activity(launch, "Cancelled", "Instance was taken out of service before its launch completed.")
    st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}", cause,
                            details={"Subnet ID": st.instance.subnet_id, "Availability Zone": st.instance.placement.zone})
    hooks = _hooks(group, TERMINATING) if use_hooks else []
    if hooks:
        st.lifecycle_state = "Terminating:Wait"
        st.activity.status_code = "MidLifecycleAction"
        _start_wait(group, st, hooks)
    else:
        _finish_termination(group, st)
    return st.activity


def _finish_termination(group, st) -> None:
    st.actions = {}
    st.lifecycle_state = "Terminating:Proceed"
    if st in group.instance_states:
        group.instance_states.remove(st)
    if st.instance.state != "terminated":
        group.autoscaling_backend.ec2_backend.terminate_instances([st.instance.id])
    _release_ip(group, st)
    st.lifecycle_state = "Terminated"
    _finish_activity(getattr(st, "activity", None))
    _refresh_load_balancers(group)


# ---------------------------------------------------------------- warm pool

def _warm(group) -> list:
    """The group's warm pool instances (any Warmed:* state short of Warmed:Terminated). They
    are kept apart from group.instance_states, so DescribeAutoScalingGroups leaves them out."""
    if not hasattr(group, "ss_warm"):
        group.ss_warm = []
    return group.ss_warm


def _pool_active(group) -> bool:
    wp = getattr(group, "warm_pool", None)
    return wp is not None and getattr(wp, "status", None) is None


def _pool_members(group) -> list:
    return [s for s in _warm(group) if s.lifecycle_state in WARMED_LIVE]


def _pool_target(group) -> int:
    """max(MinSize, (MaxGroupPreparedCapacity, else the group's MaxSize) - DesiredCapacity)."""
    if not _pool_active(group):
        return 0  # no warm pool, or one marked for deletion
    wp = group.warm_pool
    cap = wp.max_group_prepared_capacity
    if cap is None:
        cap = group.max_size or 0
    return max(wp.min_size or 0, cap - (group.desired_capacity or 0))


def _reuse(group) -> bool:
    return _pool_active(group) and bool((group.warm_pool.instance_reuse_policy or {}).get("ReuseOnScaleIn"))


def _cancel_launch_activity(st) -> None:
    launch = getattr(st, "activity", None)
    if launch is not None and launch.end_time is None:
        _finish_activity(launch, "Cancelled", "Instance was taken out of service before its launch completed.")


def _enter_pool(group, st, transition: str, origin: str) -> None:
    """An instance on its way into the warm pool waits in Warmed:Pending:Wait for the hooks of
    `transition` (launch hooks from EC2, terminate hooks on a return from the group), else settles."""
    hooks = _hooks(group, transition)
    if hooks:
        st.lifecycle_state = "Warmed:Pending:Wait"
        st.activity.status_code = "MidLifecycleAction"
        _start_wait(group, st, hooks, origin=origin, destination="WarmPool")
    else:
        _warm_settle(group, st)


def _warm_settle(group, st) -> None:
    """Warmed:Pending:Proceed, then the pool state: Stopped and Hibernated stop the EC2 instance."""
    st.actions = {}
    st.lifecycle_state = "Warmed:Pending:Proceed"
    state = getattr(st, "ss_pool_state", "Stopped")
    if state in ("Stopped", "Hibernated") and st.instance.state == "running":
        group.autoscaling_backend.ec2_backend.stop_instances([st.instance.id])
    elif state == "Running" and st.instance.state != "running":
        group.autoscaling_backend.ec2_backend.start_instances([st.instance.id])
    st.lifecycle_state = f"Warmed:{state}"
    _finish_activity(getattr(st, "activity", None))


def _take_from_pool(group, cause: str, zone: str | None = None, purpose: str | None = None):
    """Move a warmed instance into the group (scale-out); None if none has finished warming."""
    ready = [s for s in _warm(group) if s.lifecycle_state in WARMED_READY]
    if zone is not None:
        ready = [s for s in ready if s.instance.placement.zone == zone]
    if not ready:
        return None
    rank = {az: i for i, (az, _) in enumerate(_zone_order(group))}  # the zone with the fewest live first
    st = min(ready, key=lambda s: (rank.get(s.instance.placement.zone, len(rank)), _launched_at(s)))
    _warm(group).remove(st)
    if st.instance.state != "running":
        group.autoscaling_backend.ec2_backend.start_instances([st.instance.id])
    st.actions = {}
    st.lifecycle_state = "Pending"
    st.ss_purpose = purpose
    st.ss_from_pool = True
    group.instance_states.append(st)
    st.activity = _activity(group, f"Launching a new EC2 instance from warm pool: {st.instance.id}", cause,
                            details={"Subnet ID": st.instance.subnet_id, "Availability Zone": st.instance.placement.zone})
    hooks = _hooks(group, LAUNCHING)  # the launch hooks run again when an instance leaves the pool
    if hooks:
        st.lifecycle_state = "Pending:Wait"
        st.activity.status_code = "MidLifecycleAction"
        _start_wait(group, st, hooks, origin="WarmPool", destination="AutoScalingGroup")
    else:
        _enter_service(group, st)
    return st


def _return_to_pool(group, st, cause: str) -> None:
    """Scale-in with ReuseOnScaleIn: Warmed:Pending, Warmed:Pending:Wait for the terminate
    hooks, Warmed:Pending:Proceed, then the pool state."""
    st.actions = {}
    _cancel_launch_activity(st)
    if st in group.instance_states:
        group.instance_states.remove(st)
    _warm(group).append(st)
    st.lifecycle_state = "Warmed:Pending"
    st.ss_pool_state = group.warm_pool.pool_state
    st.ss_purpose = None
    st.activity = _activity(group, f"Moving EC2 instance into warm pool: {st.instance.id}", cause,
                            details={"Subnet ID": st.instance.subnet_id, "Availability Zone": st.instance.placement.zone})
    _enter_pool(group, st, TERMINATING, origin="AutoScalingGroup")
    _refresh_load_balancers(group)


def _warm_terminate(group, st, cause: str, use_hooks: bool = True) -> None:
    """Warmed:Terminating, Warmed:Terminating:Wait for the terminate hooks, then Warmed:Terminated."""
    st.actions = {}
    _cancel_launch_activity(st)
    st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}", cause,
                            details={"Subnet ID": st.instance.subnet_id, "Availability Zone": st.instance.placement.zone})
    st.lifecycle_state = "Warmed:Terminating"
    hooks = _hooks(group, TERMINATING) if use_hooks else []
    if hooks:
        st.lifecycle_state = "Warmed:Terminating:Wait"
        st.activity.status_code = "MidLifecycleAction"
        _start_wait(group, st, hooks, origin="WarmPool", destination="EC2")
    else:
        _warm_finish_termination(group, st)


def _warm_finish_termination(group, st) -> None:
    st.actions = {}
    st.lifecycle_state = "Warmed:Terminating:Proceed"
    if st in _warm(group):
        _warm(group).remove(st)
    if st.instance.state != "terminated":
        group.autoscaling_backend.ec2_backend.terminate_instances([st.instance.id])
    _release_ip(group, st)
    st.lifecycle_state = "Warmed:Terminated"
    _finish_activity(getattr(st, "activity", None))


def _warm_pool_step(group) -> None:
    """Fill the warm pool to its size, or shrink it (newest first); a pool marked for
    deletion goes once its last instance is terminated."""
    members = _pool_members(group)
    target = _pool_target(group)
    suspended = _suspended(group)
    if len(members) < target and "Launch" not in suspended:
        cause = (
            f"At {_iso()} an instance was launched into the warm pool in response to a difference between "
            f"the desired and actual size of the warm pool, increasing it from {len(members)} to {target}."
        )
        for _ in range(target - len(members)):
            if _launch_one(group, cause, pool=True) is None:
                break
    elif len(members) > target and "Terminate" not in suspended:
        cause = (
            f"At {_iso()} an instance was taken out of the warm pool in response to a difference between "
            f"the desired and actual size of the warm pool, shrinking it from {len(members)} to {target}."
        )
        for st in sorted(members, key=_launched_at, reverse=True)[: len(members) - target]:
            _warm_terminate(group, st, cause)
    wp = getattr(group, "warm_pool", None)
    if wp is not None and getattr(wp, "status", None) == "PendingDelete" and not _warm(group):
        group.warm_pool = None


def _warm_pool_size(self):
    """DescribeAutoScalingGroups WarmPoolSize: the current size of the warm pool."""
    return len(_pool_members(self)) if getattr(self, "warm_pool", None) is not None else None


# ---------------------------------------------------------------- termination policies

def _template_age(group, st) -> tuple[int, int, int]:
    """Smaller is older: launch configurations first, then non-current templates, then old versions."""
    spec = getattr(st, "ss_launch", ("none",))
    if spec[0] == "lc":
        current = group.launch_config.name if group.launch_config else None
        return (1, int(spec[1] == current), 0)
    if spec[0] == "lt":
        current = group.ec2_launch_template.id if group.ec2_launch_template else None
        return (2, int(spec[1] == current), spec[2])
    return (0, 0, 0)  # attached instances: launched from neither


def _keep_min(candidates: list, key) -> list:
    best = min(key(c) for c in candidates)
    return [c for c in candidates if key(c) == best]


def _oldest_launch(group, candidates: list) -> list:
    return _keep_min(candidates, lambda s: _template_age(group, s))


def _closest_to_hour(group, candidates: list) -> list:
    t = now()
    return _keep_min(candidates, lambda s: -((t - _launched_at(s)) % 3600))


def _default_policy(group, candidates: list) -> list:
    return _closest_to_hour(group, _oldest_launch(group, candidates))


TERMINATION_POLICIES = {
    "Default": _default_policy,
    "OldestLaunchTemplate": _oldest_launch,
    "OldestLaunchConfiguration": _oldest_launch,
    "ClosestToNextInstanceHour": _closest_to_hour,
    "OldestInstance": lambda group, c: _keep_min(c, _launched_at),
    "NewestInstance": lambda group, c: _keep_min(c, lambda s: -_launched_at(s)),
    "AllocationStrategy": lambda group, c: c,  # allocation strategies are not modelled
}


def _apply_policies(group, candidates: list):
    for name in group.termination_policies or ["Default"]:
        candidates = TERMINATION_POLICIES.get(name, lambda g, c: c)(group, candidates)
        if len(candidates) == 1:
            break
    return candidates[0]  # AWS picks at random among ties; the model takes the earliest


def _over_market(group, remaining: list) -> str | None:
    """Which purchase option a scale-in should take from to keep the on-demand/spot split."""
    if _distribution(group) is None:
        return None
    desired = group.desired_capacity or 0
    target = _on_demand_target(group, desired)
    on_demand = sum(1 for s in remaining if _market(s) == "on-demand")
    if on_demand > target:
        return "on-demand"
    if len(remaining) - on_demand > desired - target:
        return "spot"
    return None


def _pick_victim(group, exclude: list):
    """Default termination behaviour: the AZ with the most instances that has an unprotected
    one, then the group's termination policies within it. None if all are protected."""
    remaining = [s for s in _live(group) if s not in exclude and not _surplus(s)]
    candidates = [s for s in remaining if not _protected(s)]
    if not candidates:
        return None
    zones = set(_zone_names(group))
    outside = [s for s in candidates if s.instance.placement.zone not in zones]
    if outside:  # the group no longer uses that zone
        return _apply_policies(group, outside)
    market = _over_market(group, remaining)
    if market is not None:
        kind = [s for s in candidates if _market(s) == market]
        if kind:
            candidates, remaining = kind, [s for s in remaining if _market(s) == market]
    per_az = Counter(s.instance.placement.zone for s in remaining)
    most = max(per_az[s.instance.placement.zone] for s in candidates)
    return _apply_policies(group, [s for s in candidates if per_az[s.instance.placement.zone] == most])


def _pick_victims(group, count: int) -> list:
    victims: list = []
    for _ in range(count):
        victim = _pick_victim(group, victims)
        if victim is None:
            break
        victims.append(victim)
    return victims


# ---------------------------------------------------------------- reconcile

def reconcile(group, reason: str = "") -> None:
    """Converge the group: Capacity Rebalancing, desired capacity, then AZ balance."""
    if getattr(group, "ss_busy", False) or getattr(group, "ss_hold", False):
        return
    group.ss_busy = True
    try:
        for _ in range(6):  # launches without hooks go InService at once; let the next step see them
            before = _fingerprint(group)
            _capacity_rebalance(group)
            _scale(group, reason)
            _warm_pool_step(group)
            _az_rebalance(group)
            reason = ""
            if _fingerprint(group) == before:
                break
    finally:
        group.ss_busy = False
    _refresh_load_balancers(group)


def _fingerprint(group) -> tuple:
    return (
        group.desired_capacity,
        tuple((s.instance.id, s.lifecycle_state) for s in group.instance_states + _warm(group)),
        getattr(group, "warm_pool", None) is not None,
    )


def _scale(group, reason: str) -> None:
    """Launch or terminate until the live instances match the target capacity."""
    live = len(_live(group))
    target = _target(group)
    desired = group.desired_capacity or 0
    ts = _iso()
    if live < target and "Launch" not in _suspended(group):
        cause = (
            f"{reason}At {ts} an instance was started in response to a difference between desired "
            f"and actual capacity, increasing the capacity from {live} to {desired}."
        )
        for _ in range(target - live):
            if _launch_one(group, cause) is None:
                break  # every zone failed or waits for its retry time
    elif live > target and "Terminate" not in _suspended(group):
        reason = reason or getattr(group, "ss_reason_next", "")
        group.ss_reason_next = ""
        victims = _pick_victims(group, live - target)
        for st in victims:
            cause = (
                f"{reason}At {ts} an instance was taken out of service in response to a difference "
                f"between desired and actual capacity, shrinking the capacity from {live} to {desired}. "
                f"At {ts} instance {st.instance.id} was selected for termination."
            )
            if _reuse(group):
                _return_to_pool(group, st, cause)  # InstanceReusePolicy.ReuseOnScaleIn
            else:
                _begin_termination(group, st, cause)
        if len(victims) < live - target:
            _note_protected(group, reason)


def _note_protected(group, reason: str) -> None:
    """AWS records one Cancelled activity when protection stops a scale-in."""
    key = (group.desired_capacity, tuple(sorted(s.instance.id for s in _live(group))))
    if getattr(group, "ss_blocked", None) == key:
        return
    group.ss_blocked = key
    act = _activity(group, PROTECTED_NOTE, f"{reason}At {_iso()} group reached equilibrium.")
    _finish_activity(act, "Cancelled", PROTECTED_NOTE)


def _az_rebalance(group) -> None:
    """Launch in the short zones first; the scale-in that follows takes from the long ones."""
    if {"AZRebalance", "Launch"} & _suspended(group):
        return
    live = _live(group)
    if any(_surplus(s) for s in live) or len(live) != _target(group):
        return  # a rebalance or a scaling activity is under way
    plan = _rebalance_plan(group, live)
    if not plan:
        return
    cause = (
        f"At {_iso()} instances were launched to balance instances in zones {' '.join(dict.fromkeys(plan))} "
        "with other zones resulting in more than desired number of instances in the group."
    )
    group.ss_reason_next = cause + "  "
    for az in plan:
        if _launch_one(group, cause, zone=az, purpose="az-rebalance") is None:
            break
    if not any(_surplus(s) for s in _live(group)) and len(_live(group)) == _target(group):
        group.ss_reason_next = ""  # nothing launched: no termination will follow


def _rebalance_plan(group, live: list) -> list[str]:
    """Zones to launch in so that, after the long zones lose as many, no two zones differ by
    more than one. Only unprotected instances can go; MaxSize may be exceeded by the margin."""
    zones = _zone_names(group)
    ready = [z for z in zones if _zone_ready(group, z)]
    counts = Counter({z: 0 for z in zones})
    counts.update(s.instance.placement.zone for s in live if s.instance.placement.zone in counts)
    movable = Counter(s.instance.placement.zone for s in live if not _protected(s))
    outside = sum(1 for s in live if s.instance.placement.zone not in counts and not _protected(s))
    limit = (group.max_size or 0) + _margin(group)
    plan: list[str] = []
    while ready and len(live) + len(plan) < limit:
        short = min(ready, key=lambda z: counts[z])
        if outside:
            outside -= 1
        else:
            long = max(zones, key=lambda z: counts[z] if movable[z] else -1)
            if not movable[long] or counts[long] - counts[short] <= 1:
                break
            movable[long] -= 1
            counts[long] -= 1
        counts[short] += 1
        plan.append(short)
    return plan


def _capacity_rebalance(group) -> None:
    """Replace Spot Instances that got a rebalance recommendation: launch first, then
    terminate the old one (through the terminate hooks) once the new one is InService."""
    if not group.capacity_rebalance:
        return
    suspended = _suspended(group)
    for st in list(_live(group)):
        if getattr(st, "ss_recommended_at", None) is None:
            continue
        if _replacement_ready(st):
            if "Terminate" not in suspended:
                cause = (
                    f"At {_iso()} instance {st.instance.id} was taken out of service in response to an EC2 "
                    f"instance rebalance recommendation; its replacement {st.ss_replaced_by} is in service."
                )
                _begin_termination(group, st, cause)
            continue
        if _replacement_of(st) is not None or "Launch" in suspended:
            continue
        if len(_live(group)) + 1 > (group.max_size or 0) + _margin(group):
            continue
        cause = (
            f"At {_iso()} an instance was launched in response to an EC2 instance rebalance recommendation "
            f"for instance {st.instance.id}."
        )
        _launch_one(group, cause, prefer=st.instance.placement.zone, purpose="capacity-rebalance", replaces=st)


def recommend_rebalance(instance_id: str) -> dict:
    """EC2 emits a rebalance recommendation for a Spot Instance (control endpoint).

    KeyError: unknown instance; ValueError: not a running Spot Instance of a group."""
    st = REGISTRY[instance_id]
    if _market(st) != "spot":
        raise ValueError(f"{instance_id} is an On-Demand Instance; EC2 sends rebalance recommendations only to Spot Instances")
    if st.lifecycle_state not in LIVE:
        raise ValueError(f"{instance_id} is {st.lifecycle_state}; only a running instance gets a rebalance recommendation")
    if getattr(st, "ss_recommended_at", None) is None:
        st.ss_recommended_at = now()
    group = st.auto_scaling_group
    if group.name in group.autoscaling_backend.autoscaling_groups:
        reconcile(group)
    return _describe(st)


def settle_all() -> None:
    for backend in all_backends():
        for group in list(backend.autoscaling_groups.values()):
            reconcile(group)


# ---------------------------------------------------------------- lifecycle actions

def _complete(group, st, hook_name: str, result: str, why: str) -> None:
    action = st.actions.pop(hook_name)
    if st.lifecycle_state == "Pending:Wait":
        if result == "ABANDON":
            st.actions = {}
            _finish_activity(
                st.activity,
                "Cancelled",
                f"Instance failed to complete user's Lifecycle Action: Lifecycle Action with token "
                f"{action.token} was abandoned: {why}",
            )
            # An abandoned launch is terminated without running terminate hooks, then replaced.
            _begin_termination(
                group,
                st,
                f"At {_iso()} an instance was taken out of service in response to an abandoned "
                f"launch lifecycle action ({why}).",
                use_hooks=False,
            )
        elif not st.actions:
            st.lifecycle_state = "Pending:Proceed"
            _enter_service(group, st)
    elif st.lifecycle_state == "Terminating:Wait":
        # CONTINUE and ABANDON both let the termination go on; ABANDON skips remaining hooks.
        if result == "ABANDON" or not st.actions:
            _finish_termination(group, st)
    elif st.lifecycle_state == "Warmed:Pending:Wait":
        if action.transition == LAUNCHING and result == "ABANDON":
            # A launch into the warm pool abandoned: terminated (no terminate hooks), the pool refilled.
            st.actions = {}
            _finish_activity(
                st.activity,
                "Cancelled",
                f"Instance failed to complete user's Lifecycle Action: Lifecycle Action with token "
                f"{action.token} was abandoned: {why}",
            )
            _warm_terminate(
                group,
                st,
                f"At {_iso()} an instance was taken out of the warm pool in response to an abandoned "
                f"launch lifecycle action ({why}).",
                use_hooks=False,
            )
        elif (action.transition == TERMINATING and result == "ABANDON") or not st.actions:
            # Returning to the pool on scale-in (terminate hooks): either result goes on into the pool.
            _warm_settle(group, st)
    elif st.lifecycle_state == "Warmed:Terminating:Wait":
        if result == "ABANDON" or not st.actions:
            _warm_finish_termination(group, st)
    reconcile(group)


def apply_due() -> None:
    """Apply the DefaultResult of every lifecycle action whose timeout has passed, then let
    every group converge (retries of failed launches, rebalancing, resumed processes)."""
    t = now()
    for backend in all_backends():
        for group in list(backend.autoscaling_groups.values()):
            for st in list(group.instance_states) + list(_warm(group)):
                for name, action in list(getattr(st, "actions", {}).items()):
                    if name in st.actions and action.due(t):
                        kind = "heartbeat" if action.deadline <= action.global_deadline else "global"
                        _complete(
                            group,
                            st,
                            name,
                            action.default_result,
                            f"Lifecycle Action timed out ({kind} timeout) with {action.default_result} Result",
                        )
    settle_all()


def _find_action(backend, group_name: str, hook_name: str, token: str | None, instance_id: str | None):
    group = backend.autoscaling_groups[group_name]
    if f"{group_name}_{hook_name}" not in backend.lifecycle_hooks:
        raise ValidationError(f"No Lifecycle Hook found with name {hook_name} for group {group_name}")
    for st in group.instance_states + _warm(group):
        action = getattr(st, "actions", {}).get(hook_name)
        if action is None:
            continue
        if token and action.token == token and (not instance_id or st.instance.id == instance_id):
            return group, st
        if not token and st.instance.id == instance_id:
            return group, st
    if token:
        raise ValidationError(f"No active Lifecycle Action found with token {token}")
    if instance_id:
        raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")
    raise ValidationError("Either LifecycleActionToken or InstanceId must be provided.")


# ---------------------------------------------------------------- patched moto backend

def _group_set_desired_capacity(self, new_capacity) -> None:
    creating = not hasattr(self, "desired_capacity")
    old = 0 if creating else self.desired_capacity
    self.desired_capacity = self.min_size if new_capacity is None else new_capacity
    if getattr(self, "ss_hold", False):
        return  # inside _group_update, which reconciles once the group is consistent again
    reason = ""
    if creating:
        reason = f"At {_iso()} a user request created an AutoScalingGroup changing the desired capacity from 0 to {self.desired_capacity}.  "
    elif old != self.desired_capacity:
        reason = f"At {_iso()} a user request explicitly set group desired capacity changing the desired capacity from {old} to {self.desired_capacity}.  "
    reconcile(self, reason)


_orig_group_update = asm.FakeAutoScalingGroup.update


def _group_update(self, **kwargs) -> None:
    # moto drops a MixedInstancesPolicy that an update does not repeat; AWS keeps it. Hold
    # launches until the policy is back, so they follow it.
    kept, old = self.mixed_instances_policy, self.desired_capacity
    self.ss_hold = True
    try:
        _orig_group_update(self, **kwargs)
    finally:
        self.ss_hold = False
    if self.mixed_instances_policy is None:
        self.mixed_instances_policy = kept
    reason = ""
    if self.desired_capacity != old:
        reason = (
            f"At {_iso()} a user request update of AutoScalingGroup constraints to min: {self.min_size}, "
            f"max: {self.max_size}, desired: {self.desired_capacity} changing the desired capacity "
            f"from {old} to {self.desired_capacity}.  "
        )
    reconcile(self, reason)


def _backend_terminate_instance(self, instance_id: str, should_decrement: bool):
    group, st = _group_of(self, instance_id)
    if st is None and any(s.instance.id == instance_id for g in self.autoscaling_groups.values() for s in _warm(g)):
        # "This operation cannot be called on instances in a warm pool." (API reference; wording the model's)
        raise ValidationError(
            f"The instance {instance_id} is in a warm pool. TerminateInstanceInAutoScalingGroup cannot be called "
            "on instances in a warm pool."
        )
    if st is None:
        raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    if st.lifecycle_state.startswith("Terminating"):
        # Its termination is an activity in progress (MidLifecycleAction while a hook holds it).
        raise AutoscalingClientError("ScalingActivityInProgress", IN_PROGRESS.format(st.activity.activity_id))
    original = group.desired_capacity
    if should_decrement:
        if group.desired_capacity <= group.min_size:
            raise ValidationError(
                f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance without "
                "replacement will violate group's min size constraint. Either set shouldDecrementDesiredCapacity "
                "flag to false or lower group's min size."
            )
        group.desired_capacity -= 1
    # Scale-in protection does not stop a termination the user asks for.
    cause = f"At {_iso()} instance {instance_id} was taken out of service in response to a user request"
    cause += f", shrinking the capacity from {original} to {group.desired_capacity}." if should_decrement else "."
    activity = _begin_termination(group, st, cause)
    reconcile(group)  # without decrement the group launches a replacement; with it, it may rebalance
    return activity


def _backend_notify_terminate_instances(self, instance_ids: list[str]) -> None:
    # EC2 TerminateInstances on a group member: the group notices and replaces it.
    for group in list(self.autoscaling_groups.values()):
        gone = [s for s in group.instance_states if s.instance.id in instance_ids]
        for st in gone:
            st.activity = _activity(
                group,
                f"Terminating EC2 instance: {st.instance.id}",
                f"At {_iso()} an instance was taken out of service in response to an EC2 health check "
                "indicating it has been terminated or stopped.",
            )
            _finish_termination(group, st)
        warm_gone = [s for s in _warm(group) if s.instance.id in instance_ids]
        for st in warm_gone:
            st.actions = {}
            _cancel_launch_activity(st)
            st.activity = _activity(
                group,
                f"Terminating EC2 instance: {st.instance.id}",
                f"At {_iso()} an instance was taken out of the warm pool in response to an EC2 health check "
                "indicating it has been terminated.",
            )
            _warm_finish_termination(group, st)
        if gone or warm_gone:
            reconcile(group)


_orig_detach = asm.AutoScalingBackend.detach_instances
_orig_delete_group = asm.AutoScalingBackend.delete_auto_scaling_group
_orig_resume = asm.AutoScalingBackend.resume_processes
_orig_protect = asm.AutoScalingBackend.set_instance_protection


def _backend_detach_instances(self, group_name, instance_ids, should_decrement):
    group = self.autoscaling_groups.get(group_name)
    for st in list(group.instance_states) if group else []:
        if st.instance.id in instance_ids:
            st.actions = {}
            st.lifecycle_state = "Detached"
    return _orig_detach(self, group_name, instance_ids, should_decrement)


def _backend_delete_group(self, group_name: str) -> None:
    group = self.autoscaling_groups.get(group_name)
    if group is not None:
        # ForceDelete: instances go without waiting for terminate hooks, hooks go with the group.
        for st in list(group.instance_states):
            st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}",
                                    f"At {_iso()} an instance was taken out of service because the group was deleted.")
            _finish_termination(group, st)
        for st in list(_warm(group)):  # "the force delete option also deletes the warm pool"
            st.actions = {}
            st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}",
                                    f"At {_iso()} an instance was taken out of the warm pool because the group was deleted.")
            _warm_finish_termination(group, st)
        group.warm_pool = None
        for key, hook in list(self.lifecycle_hooks.items()):
            if hook.auto_scaling_group_name == group_name:
                del self.lifecycle_hooks[key]
    _orig_delete_group(self, group_name)


def _backend_resume(self, group_name: str, processes: list[str]) -> None:
    _orig_resume(self, group_name, processes)
    reconcile(self.autoscaling_groups[group_name])  # what was held back happens now


def _backend_protect(self, group_name: str, instance_ids: list[str], protected) -> None:
    _orig_protect(self, group_name, instance_ids, protected)
    reconcile(self.autoscaling_groups[group_name])  # a held-back scale-in may proceed


def _put_hook(backend, spec: dict, existing=None):
    """Create or update a hook from PutLifecycleHook / LifecycleHookSpecificationList params."""
    group_name, name = spec["AutoScalingGroupName"], spec["LifecycleHookName"]

    def pick(key, attr, default=None):  # PutLifecycleHook on an existing hook keeps what is not given
        value = spec.get(key)
        return value if value is not None else getattr(existing, attr, default)

    transition = pick("LifecycleTransition", "lifecycle_transition")
    if transition not in (LAUNCHING, TERMINATING):
        raise ValidationError(
            f"Invalid value for LifecycleTransition: {transition}. Valid values: {LAUNCHING}, {TERMINATING}"
        )
    timeout = int(pick("HeartbeatTimeout", "heartbeat_timeout", 3600))
    if not 30 <= timeout <= 7200:
        raise ValidationError(f"Heartbeat timeout must be between 30 and 7200 seconds, got {timeout}")
    result = pick("DefaultResult", "default_result", "ABANDON")
    if result not in ("CONTINUE", "ABANDON"):
        raise ValidationError(f"Invalid value for DefaultResult: {result}. Valid values: CONTINUE, ABANDON")
    target = pick("NotificationTargetARN", "notification_target_arn")
    role = pick("RoleARN", "role_arn")
    if target and target != getattr(existing, "notification_target_arn", None):
        # AWS sends a test message when the hook is put and refuses a target it cannot reach.
        group = backend.autoscaling_groups.get(group_name)
        test_message = {
            "AccountId": backend.account_id,
            "RequestId": str(uuid.uuid4()),
            "AutoScalingGroupARN": group.arn if group else None,
            "AutoScalingGroupName": group_name,
            "Service": "AWS Auto Scaling",
            "Event": "autoscaling:TEST_NOTIFICATION",
            "Time": _iso_ms(),
        }
        if not _send(target, test_message) and ":sqs:" in target:
            raise ValidationError(
                f"Unable to publish test message to notification target {target} using IAM role {role}. "
                "Please check your target and role configuration and try to put lifecycle hook again."
            )
    hook = backend.create_lifecycle_hook(name=name, as_name=group_name, transition=transition, timeout=timeout, result=result)
    # moto hard-codes these; AWS echoes what was given and derives GlobalTimeout.
    hook.global_timeout = min(MAX_GLOBAL_TIMEOUT, 100 * timeout)
    hook.role_arn = role
    hook.notification_target_arn = target
    hook.notification_metadata = pick("NotificationMetadata", "notification_metadata")
    return hook


# ---------------------------------------------------------------- injected Auto Scaling faults

DEFAULT_FAULT_MESSAGES = {
    "ScalingActivityInProgress": IN_PROGRESS,
    "ResourceContention": (
        "You already have a pending update to an Amazon EC2 Auto Scaling resource (for example, an Auto Scaling "
        "group, instance, or load balancer)."
    ),
    "Throttling": "Rate exceeded",
}


def _injected_fault(action: str, region: str, group_name: str | None) -> None:
    """Raise the next injected fault for this call, if one is armed."""
    rule = AUTOSCALING_FAULTS.take({"action": action, "region": region, "group": group_name})
    if rule is None:
        return
    message = rule.message or DEFAULT_FAULT_MESSAGES[rule.code]
    if "{}" in message:  # name the group's activity in progress, as AWS does
        groups = groups_named(group_name, region) if group_name else []
        act = _in_progress(groups[0]) if groups else None
        message = message.format(act.activity_id if act else str(uuid.uuid4()))
    raise AutoscalingClientError(rule.code, message)


# ---------------------------------------------------------------- patched moto responses

# Actions whose AutoScalingGroupName is only a filter, or that handle a missing group themselves.
_GROUP_OPTIONAL = {
    "CreateAutoScalingGroup", "DeleteAutoScalingGroup", "DescribeScalingActivities",
    "DescribePolicies", "DescribeScheduledActions", "ExecutePolicy", "DescribeTags",
}

_orig_call_action = asr.AutoScalingResponse.call_action
_orig_create_group = asr.AutoScalingResponse.create_auto_scaling_group
_orig_update_group = asr.AutoScalingResponse.update_auto_scaling_group


_SERVICE = botocore.session.get_session().get_service_model("autoscaling")
# Error code -> HTTP status, from the API model (ResourceContention is a 500, the rest 400).
_ERROR_STATUS = {
    shape.metadata["error"]["code"]: shape.metadata["error"].get("httpStatusCode", 400)
    for shape in (_SERVICE.shape_for(name) for name in _SERVICE.shape_names)
    if "error" in shape.metadata
}


def _error_response(code: str, message: str, kind: str = "Sender", status: int | None = None):
    # AWS's Query error document. (moto's serializer writes <message> for modelled faults,
    # which AWS SDKs other than botocore do not read.)
    body = (
        f'<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>{kind}</Type>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return status or _ERROR_STATUS.get(code, 400), {"Content-Type": "text/xml"}, body


def _resp_call_action(self):
    # Turn what would be an HTML 500 into the XML errors AWS sends.
    try:
        action = self._get_action()
        name = self._get_param("AutoScalingGroupName")
        _injected_fault(action, self.region, name if isinstance(name, str) else None)
        if action not in _GROUP_OPTIONAL and isinstance(name, str) and name not in self.autoscaling_backend.autoscaling_groups:
            raise ValidationError("AutoScalingGroup name not found - null")
        return _orig_call_action(self)
    except ServiceException as err:
        return _error_response(err.code, err.message)
    except Exception as err:  # a moto bug: still answer like AWS would, and log it
        traceback.print_exc()
        return _error_response("InternalFailure", f"{type(err).__name__}: {err}"[:500], "Receiver", 500)


def _check_size(min_size, max_size, desired) -> None:
    if None not in (min_size, max_size, desired) and not min_size <= desired <= max_size:
        raise ValidationError(
            f"Desired capacity:{desired} must be between the specified min size:{min_size} and max size:{max_size}"
        )


def _resp_create_group(self):
    name = self._get_param("AutoScalingGroupName")
    backend = self.autoscaling_backend
    if name in backend.autoscaling_groups:
        raise AutoscalingClientError(
            "AlreadyExists", f"AutoScalingGroup by this name already exists - A group with the name {name} already exists"
        )
    _check_size(self._get_int_param("MinSize"), self._get_int_param("MaxSize"), self._get_int_param("DesiredCapacity"))
    # LifecycleHookSpecificationList: hooks must exist before the first instances launch.
    specs = self._get_param("LifecycleHookSpecificationList", []) or []
    hooks = [_put_hook(backend, {**spec, "AutoScalingGroupName": name}) for spec in specs]
    try:
        return _orig_create_group(self)
    except Exception:
        for hook in hooks:
            backend.lifecycle_hooks.pop(f"{name}_{hook.name}", None)
        raise


def _resp_update_group(self):
    group = self.autoscaling_backend.autoscaling_groups[self._get_param("AutoScalingGroupName")]
    min_size = self._get_int_param("MinSize")
    max_size = self._get_int_param("MaxSize")
    desired = self._get_int_param("DesiredCapacity")
    if desired is not None:
        _check_size(group.min_size if min_size is None else min_size, group.max_size if max_size is None else max_size, desired)
    # moto's update ignores these three; AWS applies them.
    rebalance = self._get_bool_param("CapacityRebalance")
    if rebalance is not None:
        group.capacity_rebalance = rebalance
    policies = self._get_param("TerminationPolicies")
    if policies:
        group.termination_policies = list(policies)
    cooldown = self._get_int_param("DefaultCooldown")
    if cooldown is not None:
        group.default_cooldown = cooldown
    return _orig_update_group(self)


def _resp_set_desired_capacity(self):
    group = self.autoscaling_backend.autoscaling_groups[self._get_param("AutoScalingGroupName")]
    desired = self._get_int_param("DesiredCapacity")
    if desired > group.max_size:
        raise ValidationError(f"New SetDesiredCapacity value {desired} is above max value {group.max_size} for the AutoScalingGroup.")
    if desired < group.min_size:
        raise ValidationError(f"New SetDesiredCapacity value {desired} is below min value {group.min_size} for the AutoScalingGroup.")
    if self._get_bool_param("HonorCooldown", False):
        act = _in_progress(group)
        if act is not None:
            raise AutoscalingClientError("ScalingActivityInProgress", IN_PROGRESS.format(act.activity_id))
    self.autoscaling_backend.set_desired_capacity(group.name, desired)
    return asr.EmptyResult()


def _resp_delete_group(self):
    name = self._get_param("AutoScalingGroupName")
    group = self.autoscaling_backend.autoscaling_groups.get(name)
    if group is not None and not self._get_bool_param("ForceDelete", False):
        if _in_progress(group) is not None:
            raise AutoscalingClientError(
                "ScalingActivityInProgress",
                "You cannot delete an AutoScalingGroup while there are scaling activities in progress for that group.",
            )
        if group.instance_states or _warm(group):
            raise AutoscalingClientError(
                "ResourceInUse",
                "You cannot delete an AutoScalingGroup while there are instances or pending Spot instance request(s) "
                "still in the group.",
            )
    self.autoscaling_backend.delete_auto_scaling_group(name)
    return asr.EmptyResult()


def _resp_put_lifecycle_hook(self):
    backend = self.autoscaling_backend
    group_name = self._get_param("AutoScalingGroupName")
    name = self._get_param("LifecycleHookName")
    existing = backend.lifecycle_hooks.get(f"{group_name}_{name}")
    spec = {
        key: self._get_param(key)
        for key in ("LifecycleHookName", "AutoScalingGroupName", "LifecycleTransition", "HeartbeatTimeout",
                    "DefaultResult", "RoleARN", "NotificationTargetARN", "NotificationMetadata")
    }
    _put_hook(backend, spec, existing)
    return asr.EmptyResult()


def _resp_delete_lifecycle_hook(self):
    group_name = self._get_param("AutoScalingGroupName")
    name = self._get_param("LifecycleHookName")
    if f"{group_name}_{name}" not in self.autoscaling_backend.lifecycle_hooks:
        raise ValidationError(f"No Lifecycle Hook found with name {name} for group {group_name}")
    self.autoscaling_backend.delete_lifecycle_hook(group_name, name)
    return asr.EmptyResult()


def _lifecycle_params(self):
    return (
        self._get_param("AutoScalingGroupName"),
        self._get_param("LifecycleHookName"),
        self._get_param("LifecycleActionToken"),
        self._get_param("InstanceId"),
    )


def _resp_complete_lifecycle_action(self):
    group_name, hook_name, token, instance_id = _lifecycle_params(self)
    result = self._get_param("LifecycleActionResult")
    if result not in ("CONTINUE", "ABANDON"):
        raise ValidationError(f"Invalid value for LifecycleActionResult: {result}. Valid values: CONTINUE, ABANDON")
    group, st = _find_action(self.autoscaling_backend, group_name, hook_name, token, instance_id)
    _complete(group, st, hook_name, result, f"Lifecycle Action Completed with {result} Result")
    return asr.EmptyResult()


def _resp_record_heartbeat(self):
    group_name, hook_name, token, instance_id = _lifecycle_params(self)
    _, st = _find_action(self.autoscaling_backend, group_name, hook_name, token, instance_id)
    action = st.actions[hook_name]
    action.deadline = now() + action.heartbeat_timeout  # the global deadline stays where it was
    return asr.EmptyResult()


def _resp_describe_scaling_activities(self):
    name = self._get_param("AutoScalingGroupName")
    ids = self._get_param("ActivityIds", []) or []
    activities = [
        a
        for a in reversed(getattr(self.autoscaling_backend, "ss_activities", []))  # newest first, like AWS
        if (not name or a.auto_scaling_group_name == name) and (not ids or a.activity_id in ids)
    ]
    start = int(self._get_param("NextToken") or 0)
    size = self._get_int_param("MaxRecords") or 100
    page = activities[start : start + size]
    token = str(start + size) if start + size < len(activities) else None
    return asr.ActionResult({"Activities": page, "NextToken": token})


def _constraint(value, field: str, rule: str) -> ValidationError:
    # AWS's generic parameter validation wording.
    return ValidationError(f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {rule}")


def _resp_put_warm_pool(self):
    group = self.autoscaling_backend.autoscaling_groups[self._get_param("AutoScalingGroupName")]
    old = getattr(group, "warm_pool", None)
    if old is not None and getattr(old, "status", None) == "PendingDelete":
        raise ValidationError(f"The warm pool of Auto Scaling group {group.name} is being deleted.")
    cap = self._get_int_param("MaxGroupPreparedCapacity")
    min_size = self._get_int_param("MinSize")
    state = self._get_param("PoolState")
    reuse = self._get_bool_param("InstanceReusePolicy.ReuseOnScaleIn")
    if reuse is None:
        policy = self._get_param("InstanceReusePolicy")
        if isinstance(policy, dict) and policy.get("ReuseOnScaleIn") is not None:
            reuse = str(policy["ReuseOnScaleIn"]).lower() == "true"
    if cap is not None and cap < -1:
        raise _constraint(cap, "maxGroupPreparedCapacity", "Member must have value greater than or equal to -1")
    if min_size is not None and min_size < 0:
        raise _constraint(min_size, "minSize", "Member must have value greater than or equal to 0")
    if state is not None and state not in POOL_STATES:
        raise _constraint(state, "poolState", f"Member must satisfy enum value set: [{', '.join(POOL_STATES)}]")
    # PutWarmPool updates: what is not given stays; -1 removes MaxGroupPreparedCapacity.
    if cap is None:
        cap = old.max_group_prepared_capacity if old is not None else None
    elif cap == -1:
        cap = None
    if min_size is None:
        min_size = old.min_size if old is not None else 0
    if state is None:
        state = old.pool_state if old is not None else "Stopped"  # "Default is Stopped."
    policy = dict(old.instance_reuse_policy or {}) if old is not None else {}
    if reuse is not None:
        policy = {"ReuseOnScaleIn": reuse}
    wp = asm.FakeWarmPool(max_group_prepared_capacity=cap, min_size=min_size, pool_state=state,
                          instance_reuse_policy=policy or None)
    wp.status = None
    group.warm_pool = wp
    reconcile(group)
    return asr.EmptyResult()


def _warm_instance_view(group, st) -> dict:
    view = {
        "InstanceId": st.instance.id,
        "InstanceType": st.instance.instance_type,
        "AvailabilityZone": st.instance.placement.zone,
        "LifecycleState": st.lifecycle_state,
        "HealthStatus": "Healthy",
        "ProtectedFromScaleIn": bool(st.protected_from_scale_in),
    }
    spec = getattr(st, "ss_launch", ("none",))
    if spec[0] == "lc":
        view["LaunchConfigurationName"] = spec[1]
    elif spec[0] == "lt" and group.ec2_launch_template is not None:
        view["LaunchTemplate"] = {"LaunchTemplateId": spec[1], "LaunchTemplateName": group.ec2_launch_template.name,
                                  "Version": str(spec[2])}
    return view


def _resp_describe_warm_pool(self):
    group = self.autoscaling_backend.autoscaling_groups[self._get_param("AutoScalingGroupName")]
    size = self._get_int_param("MaxRecords") or 50
    if not 1 <= size <= 50:
        raise _constraint(size, "maxRecords", "Member must have value less than or equal to 50")
    views = [_warm_instance_view(group, st) for st in _warm(group)]
    token = self._get_param("NextToken")
    start = 0
    if token:
        if not token.isdigit() or int(token) > len(views):
            raise AutoscalingClientError("InvalidNextToken", "The token provided is not valid.")
        start = int(token)
    page = views[start : start + size]
    following = str(start + size) if start + size < len(views) else None
    return asr.ActionResult({"WarmPoolConfiguration": getattr(group, "warm_pool", None), "Instances": page,
                             "NextToken": following})


def _resp_delete_warm_pool(self):
    group = self.autoscaling_backend.autoscaling_groups[self._get_param("AutoScalingGroupName")]
    if getattr(group, "warm_pool", None) is None:
        return asr.EmptyResult()
    if self._get_bool_param("ForceDelete", False):
        # "deleted along with all of its associated instances, without waiting for all instances to be
        # terminated. This parameter also deletes any outstanding lifecycle actions"
        for st in list(_warm(group)):
            st.actions = {}
            _cancel_launch_activity(st)
            st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}",
                                    f"At {_iso()} an instance was taken out of the warm pool because the warm pool was deleted.")
            _warm_finish_termination(group, st)
        group.warm_pool = None
    else:
        group.warm_pool.status = "PendingDelete"  # its instances are terminated (through the terminate hooks)
    reconcile(group)
    return asr.EmptyResult()


_orig_describe_instances = asm.AutoScalingBackend.describe_auto_scaling_instances


def _backend_describe_instances(self, instance_ids):
    # Warm pool instances are Auto Scaling instances too (Warmed:* states in AutoScalingInstanceDetails).
    found = _orig_describe_instances(self, instance_ids)
    for group in self.autoscaling_groups.values():
        found.extend(s for s in _warm(group) if not instance_ids or s.instance.id in instance_ids)
    return found


def install() -> None:
    """Patch moto once; call before the first request is served."""
    G = asm.FakeAutoScalingGroup
    G.set_desired_capacity = _group_set_desired_capacity
    G.update = _group_update
    G.warm_pool_size = property(_warm_pool_size)
    B = asm.AutoScalingBackend
    B.terminate_instance = _backend_terminate_instance
    B.notify_terminate_instances = _backend_notify_terminate_instances
    B.detach_instances = _backend_detach_instances
    B.delete_auto_scaling_group = _backend_delete_group
    B.resume_processes = _backend_resume
    B.set_instance_protection = _backend_protect
    B.describe_auto_scaling_instances = _backend_describe_instances
    R = asr.AutoScalingResponse
    R.call_action = _resp_call_action
    R.create_auto_scaling_group = _resp_create_group
    R.update_auto_scaling_group = _resp_update_group
    R.set_desired_capacity = _resp_set_desired_capacity
    R.delete_auto_scaling_group = _resp_delete_group
    R.put_lifecycle_hook = _resp_put_lifecycle_hook
    R.delete_lifecycle_hook = _resp_delete_lifecycle_hook
    R.complete_lifecycle_action = _resp_complete_lifecycle_action
    R.record_lifecycle_action_heartbeat = _resp_record_heartbeat
    R.describe_scaling_activities = _resp_describe_scaling_activities
    R.put_warm_pool = _resp_put_warm_pool
    R.describe_warm_pool = _resp_describe_warm_pool
    R.delete_warm_pool = _resp_delete_warm_pool


# ---------------------------------------------------------------- control endpoint view

def _describe(st) -> dict:
    # target_lifecycle_state as IMDS reports it: Terminated as soon as termination starts.
    state = st.lifecycle_state
    in_pool = state.startswith("Warmed:")
    if state.startswith("Warmed:Terminat"):
        target = "Warmed:Terminated"
    elif in_pool:  # warming into (or back into) the pool, or warmed: the pool state it settles in
        target = f"Warmed:{getattr(st, 'ss_pool_state', 'Stopped')}"
    elif state.startswith("Terminat"):
        target = "Terminated"
    elif state.startswith("Detach"):
        target = "Detached"
    elif "Standby" in state:
        target = "Standby"
    else:
        target = "InService"
    recommended = getattr(st, "ss_recommended_at", None)
    instance = st.instance
    return {
        "instance_id": instance.id,
        "region": getattr(st, "region", None),
        "asg_name": st.auto_scaling_group_name,
        "availability_zone": instance.placement.zone,
        "subnet_id": instance.subnet_id,
        "instance_type": instance.instance_type,
        "market": _market(st),
        "lifecycle_state": state,
        "target_lifecycle_state": target,
        "ec2_state": instance.state,
        "private_ip": instance.private_ip,
        "private_dns_name": instance.private_dns_name if instance.private_ip else None,
        "protected_from_scale_in": bool(st.protected_from_scale_in),
        "launch_time": _iso_ms(_launched_at(st)),
        # IMDS meta-data/events/recommendations/rebalance: {"noticeTime": this}
        "rebalance_recommendation_time": _iso(recommended) if recommended is not None else None,
        # Warm pools: whether the instance is in the group's warm pool now (lifecycle_state Warmed:*,
        # Warmed:Terminated included), and the pool state it warms into / sits in there.
        "in_warm_pool": in_pool,
        "warm_pool_state": getattr(st, "ss_pool_state", None) if in_pool else None,
    }


def instances() -> list[dict]:
    for backend in all_backends():  # pick up instances moto added itself (AttachInstances)
        for group in backend.autoscaling_groups.values():
            for st in group.instance_states:
                if st.instance.id not in REGISTRY:
                    register(st, backend.region_name)
    return [_describe(st) for st in REGISTRY.values()]


def instance(instance_id: str) -> dict | None:
    return next((i for i in instances() if i["instance_id"] == instance_id), None)

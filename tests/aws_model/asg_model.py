"""Auto Scaling lifecycle model patched into moto 5.2.5.

moto keeps lifecycle hooks but never uses them: instances go straight to InService or
vanish, every instance lands in the first subnet, spot overrides are ignored and
several actions answer an unknown group with an HTML 500. This module replaces the
few moto functions where those decisions are made, so the rest of moto (EC2 state,
tags, ELB registration, serialisation) keeps working unchanged.

Everything here runs under LOCK; the server takes it around every Auto Scaling and
EC2 request and in its background ticker.
"""

from __future__ import annotations

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

from moto.autoscaling import models as asm
from moto.autoscaling import responses as asr
from moto.autoscaling.exceptions import AutoscalingClientError, ValidationError
from moto.core.exceptions import ServiceException

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
# States that count towards the desired capacity (Terminating:* and Standby do not).
LIVE = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
MAX_GLOBAL_TIMEOUT = 48 * 3600

LOCK = threading.RLock()
_offset = 0.0
# instance id -> moto InstanceState; keeps instances that already left their group,
# so the control endpoint can still answer "Terminated" for them.
REGISTRY: dict[str, asm.InstanceState] = {}


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


def _activity(group, description: str, cause: str, status: str = "InProgress"):
    act = asm.Activity(description, cause, group, start_time=_ts(), end_time=None, status_code=status)
    act.end_time = None  # moto stamps it at creation; AWS only sets it when the activity ends
    act.progress = 0 if status != "Successful" else 100
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


def _refresh_load_balancers(group) -> None:
    backend = group.autoscaling_backend
    if group.name in backend.autoscaling_groups:
        backend.update_attached_elbs(group.name)
        backend.update_attached_target_groups(group.name)


def _start_wait(group, st, hooks) -> None:
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
                "Origin": "EC2" if launching else "AutoScalingGroup",
                "Destination": "AutoScalingGroup" if launching else "EC2",
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
    except Exception:
        return False


def register(st, region: str) -> None:
    st.region = region
    REGISTRY[st.instance.id] = st


# ---------------------------------------------------------------- placement and purchase option

def _zones(group) -> list[tuple[str, str | None]]:
    """(availability zone, subnet id) choices of the group, in configured order."""
    if group.vpc_zone_identifier:
        ec2 = group.autoscaling_backend.ec2_backend
        ids = [s.strip() for s in group.vpc_zone_identifier.split(",") if s.strip()]
        return [(ec2.get_subnet(i).availability_zone, i) for i in ids]
    return [(az, None) for az in group.availability_zones]


def _pick_zone(group) -> tuple[str, str | None]:
    # AWS balances across AZs: launch into the AZ (then subnet) with the fewest live instances.
    live = _live(group)
    per_az = Counter(s.instance.placement.zone for s in live)
    per_subnet = Counter(s.instance.subnet_id for s in live)
    return min(_zones(group), key=lambda z: (per_az[z[0]], per_subnet[z[1]]))


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


def _market(st) -> str:
    return getattr(st, "market", "on-demand")


def _pick_type_and_market(group) -> tuple[str, str]:
    overrides = []
    if group.mixed_instances_policy:
        overrides = [
            o["InstanceType"]
            for o in (group.mixed_instances_policy.get("LaunchTemplate") or {}).get("Overrides") or []
            if o.get("InstanceType")
        ]
    if overrides:  # round-robin over the overrides, as a diversified allocation would
        turn = getattr(group, "ss_turn", 0)
        group.ss_turn = turn + 1
        instance_type = overrides[turn % len(overrides)]
    else:
        instance_type = group.instance_type
    market = "on-demand"
    if _distribution(group) is not None:
        on_demand = sum(1 for s in _live(group) if _market(s) == "on-demand")
        if on_demand >= _on_demand_target(group, group.desired_capacity or 0):
            market = "spot"
    return instance_type, market


# ---------------------------------------------------------------- launch / terminate

def _launch_one(group, cause: str) -> None:
    backend = group.autoscaling_backend
    az, subnet = _pick_zone(group)
    instance_type, market = _pick_type_and_market(group)
    tags = group.get_propagated_tags()
    tags[asm.ASG_NAME_TAG] = group.name
    tags.update(group.instance_tags)
    launch_template = None
    if group.ec2_launch_template:
        launch_template = {"LaunchTemplateId": group.ec2_launch_template.id}
    reservation = backend.ec2_backend.run_instances(
        group.image_id,
        1,
        group.user_data,
        group.security_groups,
        instance_type=instance_type,
        tags={"instance": tags},
        placement=az,
        subnet_id=subnet,
        launch_config=group.launch_config,
        launch_template=launch_template,
        is_instance_type_default=False,
        associate_public_ip=group.launch_config.associate_public_ip_address if group.launch_config else None,
        lifecycle="spot" if market == "spot" else None,  # EC2 DescribeInstances: InstanceLifecycle=spot
    )
    instance = reservation.instances[0]
    # Set afterwards: passed to run_instances it trips moto's offering tables for newer regions.
    instance.region_name = backend.region_name  # used in the instance's DNS names
    instance.autoscaling_group = group
    st = asm.InstanceState(
        instance, lifecycle_state="Pending", protected_from_scale_in=group.new_instances_protected_from_scale_in
    )
    st.market = market
    st.actions = {}
    group.instance_states.append(st)
    register(st, backend.region_name)
    st.activity = _activity(group, f"Launching a new EC2 instance: {instance.id}", cause)
    hooks = _hooks(group, LAUNCHING)
    if hooks:
        st.lifecycle_state = "Pending:Wait"
        st.activity.status_code = "MidLifecycleAction"
        _start_wait(group, st, hooks)
    else:
        _enter_service(group, st)


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
    st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}", cause)
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
    st.lifecycle_state = "Terminated"
    _finish_activity(getattr(st, "activity", None))
    _refresh_load_balancers(group)


def _pick_victims(group, count: int) -> list:
    """Default termination policy, simplified: keep the on-demand/spot split, then take
    from the AZ with the most instances, oldest first."""
    victims: list = []
    desired = group.desired_capacity or 0
    for _ in range(count):
        remaining = [s for s in _live(group) if s not in victims]
        candidates = [s for s in remaining if not s.protected_from_scale_in]
        if not candidates:
            break
        if _distribution(group) is not None:
            target = _on_demand_target(group, desired)
            on_demand = sum(1 for s in remaining if _market(s) == "on-demand")
            over = "on-demand" if on_demand > target else "spot" if len(remaining) - on_demand > desired - target else None
            candidates = [s for s in candidates if _market(s) == over] or candidates
        per_az = Counter(s.instance.placement.zone for s in remaining)
        victims.append(max(candidates, key=lambda s: per_az[s.instance.placement.zone]))
    return victims


def reconcile(group, reason: str = "") -> None:
    """Launch or terminate until the live instances match the desired capacity."""
    suspended = set(group._suspended_processes)
    live = len(_live(group))
    desired = group.desired_capacity or 0
    ts = _iso()
    if live < desired and "Launch" not in suspended:
        cause = (
            f"{reason}At {ts} an instance was started in response to a difference between desired "
            f"and actual capacity, increasing the capacity from {live} to {desired}."
        )
        for _ in range(desired - live):
            _launch_one(group, cause)
    elif live > desired and "Terminate" not in suspended:
        for st in _pick_victims(group, live - desired):
            cause = (
                f"{reason}At {ts} an instance was taken out of service in response to a difference "
                f"between desired and actual capacity, shrinking the capacity from {live} to {desired}. "
                f"At {ts} instance {st.instance.id} was selected for termination."
            )
            _begin_termination(group, st, cause)


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
            reconcile(group)
        elif not st.actions:
            st.lifecycle_state = "Pending:Proceed"
            _enter_service(group, st)
    elif st.lifecycle_state == "Terminating:Wait":
        # CONTINUE and ABANDON both let the termination go on; ABANDON skips remaining hooks.
        if result == "ABANDON" or not st.actions:
            _finish_termination(group, st)


def apply_due() -> None:
    """Apply the DefaultResult of every lifecycle action whose timeout has passed."""
    t = now()
    for backend in all_backends():
        for group in list(backend.autoscaling_groups.values()):
            for st in list(group.instance_states):
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


def _find_action(backend, group_name: str, hook_name: str, token: str | None, instance_id: str | None):
    group = backend.autoscaling_groups[group_name]
    if f"{group_name}_{hook_name}" not in backend.lifecycle_hooks:
        raise ValidationError(f"No Lifecycle Hook found with name {hook_name} for group {group_name}")
    for st in group.instance_states:
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
    _refresh_load_balancers(self)


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
    _refresh_load_balancers(self)


def _backend_terminate_instance(self, instance_id: str, should_decrement: bool):
    group, st = _group_of(self, instance_id)
    if st is None:
        raise ValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    if st.lifecycle_state.startswith("Terminating"):
        return st.activity  # already on its way out: nothing more to do
    original = group.desired_capacity
    if should_decrement:
        if group.desired_capacity <= group.min_size:
            raise ValidationError(
                f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance without "
                "replacement will violate group's min size constraint. Either set shouldDecrementDesiredCapacity "
                "flag to false or lower group's min size."
            )
        group.desired_capacity -= 1
    cause = f"At {_iso()} instance {instance_id} was taken out of service in response to a user request"
    cause += f", shrinking the capacity from {original} to {group.desired_capacity}." if should_decrement else "."
    activity = _begin_termination(group, st, cause)
    reconcile(group)  # without decrement the group launches a replacement right away
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
        if gone:
            reconcile(group)


_orig_detach = asm.AutoScalingBackend.detach_instances
_orig_delete_group = asm.AutoScalingBackend.delete_auto_scaling_group


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
        # Like ForceDelete: instances go without waiting for terminate hooks, hooks go with the group.
        for st in list(group.instance_states):
            st.activity = _activity(group, f"Terminating EC2 instance: {st.instance.id}",
                                    f"At {_iso()} an instance was taken out of service because the group was deleted.")
            _finish_termination(group, st)
        for key, hook in list(self.lifecycle_hooks.items()):
            if hook.auto_scaling_group_name == group_name:
                del self.lifecycle_hooks[key]
    _orig_delete_group(self, group_name)


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


# ---------------------------------------------------------------- patched moto responses

# Actions whose AutoScalingGroupName is only a filter, or that handle a missing group themselves.
_GROUP_OPTIONAL = {
    "CreateAutoScalingGroup", "DeleteAutoScalingGroup", "DescribeScalingActivities",
    "DescribePolicies", "DescribeScheduledActions", "ExecutePolicy", "DescribeTags",
}

_orig_call_action = asr.AutoScalingResponse.call_action
_orig_create_group = asr.AutoScalingResponse.create_auto_scaling_group
_orig_update_group = asr.AutoScalingResponse.update_auto_scaling_group


def _resp_call_action(self):
    # Turn what would be an HTML 500 into the XML errors AWS sends.
    try:
        action = self._get_action()
        name = self._get_param("AutoScalingGroupName")
        if action not in _GROUP_OPTIONAL and isinstance(name, str) and name not in self.autoscaling_backend.autoscaling_groups:
            raise ValidationError("AutoScalingGroup name not found - null")
        return _orig_call_action(self)
    except ServiceException as err:
        status, headers, body = self.serialized(asr.ActionResult(err))
        return status, headers, body
    except Exception as err:  # a moto bug: still answer like AWS would, and log it
        traceback.print_exc()
        body = (
            '<ErrorResponse xmlns="https://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Receiver</Type>'
            f"<Code>InternalFailure</Code><Message>{escape(f'{type(err).__name__}: {err}'[:500])}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        return 500, {"Content-Type": "text/xml"}, body


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
    return _orig_update_group(self)


def _resp_set_desired_capacity(self):
    group = self.autoscaling_backend.autoscaling_groups[self._get_param("AutoScalingGroupName")]
    desired = self._get_int_param("DesiredCapacity")
    if desired > group.max_size:
        raise ValidationError(f"New SetDesiredCapacity value {desired} is above max value {group.max_size} for the AutoScalingGroup.")
    if desired < group.min_size:
        raise ValidationError(f"New SetDesiredCapacity value {desired} is below min value {group.min_size} for the AutoScalingGroup.")
    self.autoscaling_backend.set_desired_capacity(group.name, desired)
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


def install() -> None:
    """Patch moto once; call before the first request is served."""
    G = asm.FakeAutoScalingGroup
    G.set_desired_capacity = _group_set_desired_capacity
    G.update = _group_update
    B = asm.AutoScalingBackend
    B.terminate_instance = _backend_terminate_instance
    B.notify_terminate_instances = _backend_notify_terminate_instances
    B.detach_instances = _backend_detach_instances
    B.delete_auto_scaling_group = _backend_delete_group
    R = asr.AutoScalingResponse
    R.call_action = _resp_call_action
    R.create_auto_scaling_group = _resp_create_group
    R.update_auto_scaling_group = _resp_update_group
    R.set_desired_capacity = _resp_set_desired_capacity
    R.put_lifecycle_hook = _resp_put_lifecycle_hook
    R.delete_lifecycle_hook = _resp_delete_lifecycle_hook
    R.complete_lifecycle_action = _resp_complete_lifecycle_action
    R.record_lifecycle_action_heartbeat = _resp_record_heartbeat
    R.describe_scaling_activities = _resp_describe_scaling_activities


# ---------------------------------------------------------------- control endpoint view

def _describe(st) -> dict:
    # target_lifecycle_state as IMDS reports it: Terminated as soon as termination starts.
    state = st.lifecycle_state
    if state.startswith("Terminat"):
        target = "Terminated"
    elif state.startswith("Detach"):
        target = "Detached"
    elif "Standby" in state:
        target = "Standby"
    else:
        target = "InService"
    return {
        "instance_id": st.instance.id,
        "region": getattr(st, "region", None),
        "asg_name": st.auto_scaling_group_name,
        "availability_zone": st.instance.placement.zone,
        "subnet_id": st.instance.subnet_id,
        "instance_type": st.instance.instance_type,
        "market": _market(st),
        "lifecycle_state": state,
        "target_lifecycle_state": target,
        "ec2_state": st.instance.state,
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

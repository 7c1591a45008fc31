"""A cluster's autoscaling settings, read from its `spark_conf`: pure, no I/O.

- `spark.sparkplane.autoscaling.preference`: one knob from cost to latency. It picks a point on
  the policy's cost/latency frontier (`PREFERENCES`), from `cost` (release capacity 40 s after
  the demand for it ends, half of the workers per step, no decaying peak or floor; scale up
  only for a backlog that outlasts one sample) through `balanced` (the default: the
  `AutoscaleParams()` defaults) to `latency` (hold peaks 10 minutes, keep 4x the average demand
  warm). Unset: the control plane's defaults (`balanced`, or the job-cluster preset where the
  caller uses one).

  Why `cost` waits one sample before scaling up: on generated shapes of many short jobs, most
  backlogs are gone by the next sample (the running tasks end and free their slots), yet each
  one requested workers that were billed for a whole boot and a hold window after it. Waiting
  one sample (10 s) means a backlog gone by the next sample requests nothing; that cut the
  balanced setting's node-hours by 12-33% on those shapes at a 3-51% higher p95, a trade the
  cheapest setting is for (docs/autoscaling.md, "Policy changes from the generated sweep").
- `spark.sparkplane.autoscaling.forecast` (`on` | `off`, default `off`): hold at least the
  forecast demand of the next boot period (shared/domain/forecast.py).
- `spark.sparkplane.autoscaling.proactiveResume` (`on` | `off`, default `off`): start a
  terminated cluster ahead of its predicted next use.

`conf_problem` is the validation the clusters API applies (INVALID_PARAMETER_VALUE); the
readers below assume a validated conf and fall back to the defaults on anything else.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.domain.autoscale import AutoscaleParams

PREFIX = "spark.sparkplane.autoscaling."
PREFERENCE = PREFIX + "preference"
FORECAST = PREFIX + "forecast"
PROACTIVE_RESUME = PREFIX + "proactiveResume"

DEFAULT_PREFERENCE = "balanced"
# From the cheapest to the most responsive. `balanced` is AutoscaleParams() exactly.
PREFERENCES: dict[str, AutoscaleParams] = {
    # The job-cluster preset's release (40 s hold, halving steps), and a scale-up only for a
    # backlog that lasts one sample period: a backlog the current workers clear within a
    # sample never pays for a boot and a hold window. Joining workers whose backlog is gone
    # are cancelled at once, as in `balanced`: the cheapest end of the frontier, cheaper
    # (docs/autoscaling.md, "Cancelling joining workers once their backlog is gone").
    "cost": AutoscaleParams(
        down_hold_s=40.0,
        down_half_life_s=0.0,
        floor_factor=0.0,
        down_max_fraction=0.5,
        up_backlog_s=10.0,
        drain_memory_s=0.0,
        quiet_gap_s=0.0,
    ),
    # The floor cap (`floor_max_fraction`), the first-sample drain projection
    # (`drain_memory_s`), the quiet release (`quiet_gap_s`), the small backlog's wait
    # (`up_small_backlog_s`) and the early cancellation of joining workers (`cancel_joining`)
    # were measured for `balanced` (the last also for `cost`); the other settings keep their
    # uncapped floor, project only a backlog's second sample, hold through quiet periods, meet
    # every backlog at once and keep joining workers through the hold window, as their
    # frontier was measured (`economy` with the cancellation: 6 more cells of the built-in
    # traces where some setting beats a baseline, 6 fewer on the scenario shapes).
    "economy": AutoscaleParams(
        down_hold_s=90.0,
        down_half_life_s=60.0,
        floor_factor=1.0,
        floor_max_fraction=1.0,
        drain_memory_s=0.0,
        quiet_gap_s=0.0,
        up_small_backlog_s=0.0,
        cancel_joining=False,
    ),
    "balanced": AutoscaleParams(),
    "responsive": AutoscaleParams(
        down_hold_s=300.0,
        down_half_life_s=300.0,
        floor_factor=3.0,
        floor_max_fraction=1.0,
        drain_memory_s=0.0,
        quiet_gap_s=0.0,
        up_small_backlog_s=0.0,
        cancel_joining=False,
    ),
    "latency": AutoscaleParams(
        down_hold_s=600.0,
        down_half_life_s=600.0,
        floor_factor=4.0,
        floor_max_fraction=1.0,
        drain_memory_s=0.0,
        quiet_gap_s=0.0,
        up_small_backlog_s=0.0,
        cancel_joining=False,
    ),
}
FLAGS = {FORECAST: False, PROACTIVE_RESUME: False}
_ON_OFF = {"on": True, "off": False, "true": True, "false": False}


def conf_problem(spark_conf: Mapping[str, str]) -> str | None:
    """Why the cluster's autoscaling settings are invalid, or None."""
    for key, value in spark_conf.items():
        if not key.startswith(PREFIX):
            continue
        if key == PREFERENCE:
            if value not in PREFERENCES:
                return (
                    f"Invalid spark_conf {key}: {value!r}; expected one of "
                    f"{', '.join(PREFERENCES)} (default {DEFAULT_PREFERENCE})."
                )
        elif key in FLAGS:
            if str(value).lower() not in _ON_OFF:
                return f"Invalid spark_conf {key}: {value!r}; expected on or off."
        else:
            known = ", ".join((PREFERENCE, *FLAGS))
            return f"Unknown spark_conf {key}; the autoscaling settings are {known}."
    return None


def preference(spark_conf: Mapping[str, str] | None) -> str | None:
    """The cluster's preference, or None when it has none (or an invalid one)."""
    value = (spark_conf or {}).get(PREFERENCE)
    return value if value in PREFERENCES else None


def params_for(spark_conf: Mapping[str, str] | None, default: AutoscaleParams) -> AutoscaleParams:
    """The policy parameters of a cluster: its preference's, or `default` without one."""
    name = preference(spark_conf)
    return PREFERENCES[name] if name is not None else default


def flag(spark_conf: Mapping[str, str] | None, key: str) -> bool:
    """An on/off setting (`FORECAST`, `PROACTIVE_RESUME`), its default when unset."""
    value = (spark_conf or {}).get(key)
    if value is None:
        return FLAGS[key]
    return _ON_OFF.get(str(value).lower(), FLAGS[key])

"""Workspaces placed over several subscriptions (shared/domain/arm_placement.py)."""

from __future__ import annotations

import pytest

from shared.domain.arm_placement import SubscriptionLoad, place
from shared.settings import Settings


def test_a_workspace_goes_where_there_are_fewest_clusters_then_fewest_workspaces() -> None:
    loads = [
        SubscriptionLoad("a", 3, 120),
        SubscriptionLoad("b", 5, 40),
        SubscriptionLoad("c", 1, 40),
    ]
    assert place(loads) == "c"  # b and c hold as many clusters; c fewer workspaces
    assert place([SubscriptionLoad("a", 0, 0), SubscriptionLoad("b", 0, 0)]) == "a"  # listed first


def test_there_is_always_a_subscription_to_place_in() -> None:
    assert place([SubscriptionLoad("a", 40, 9000)]) == "a"
    with pytest.raises(ValueError):
        place([])


def test_the_single_subscription_setting_keeps_working_and_comes_first() -> None:
    assert Settings(arm_subscription_id="s1").arm_subscriptions == ["s1"]
    s = Settings(arm_subscription_id="s1", arm_subscription_ids="s2, S1,,s3")
    assert s.arm_subscriptions == ["s1", "s2", "s3"]
    assert Settings(arm_subscription_ids="s2,s3").arm_subscriptions == ["s2", "s3"]

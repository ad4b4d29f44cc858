"""Front-end quota parsing: what a user's or group's template sets, validated; what goes to
the daemon; the config default. Bad values are errors naming attribute, subject and value,
never "unlimited"."""

import pytest

from one_ipfloater.one.config import ConfigError, parse_one_config_text
from one_ipfloater.one.quota import (Limits, Subject, limits_of, parse_limit, parse_subject,
                                     parse_subject_pool, quota_request)
from one_ipfloater.one.vmxml import VmXmlError

ALICE = ("<USER><ID>5</ID><GID>100</GID><GROUPS><ID>100</ID></GROUPS><GNAME>tenants</GNAME>"
         "<NAME>alice</NAME><PASSWORD>x</PASSWORD><AUTH_DRIVER>core</AUTH_DRIVER><ENABLED>1</ENABLED>"
         "<TEMPLATE><FLOATING_IP_POOL_QUOTA><LIMIT><![CDATA[1]]></LIMIT><POOL><![CDATA[campus]]></POOL>"
         "</FLOATING_IP_POOL_QUOTA><FLOATING_IP_POOL_QUOTA><LIMIT><![CDATA[ 4 ]]></LIMIT>"
         "<POOL><![CDATA[default]]></POOL></FLOATING_IP_POOL_QUOTA>"
         "<FLOATING_IP_QUOTA><![CDATA[3]]></FLOATING_IP_QUOTA></TEMPLATE>"
         "<DATASTORE_QUOTA></DATASTORE_QUOTA></USER>")


def user(**attrs):
    vectors = {k: v for k, v in attrs.items() if isinstance(v, tuple)}
    flat = {k: v for k, v in attrs.items() if not isinstance(v, tuple)}
    return Subject("user", 5, "alice", flat, vectors, gid=100, gname="tenants")


def test_a_user_document_gives_limit_and_per_pool_limits():
    subject = parse_subject(ALICE, "user")
    assert (subject.id, subject.name, subject.gid, subject.scope) == (5, "alice", 100, "one:uid:5")
    limits = limits_of(subject)
    assert (limits.limit, limits.source, dict(limits.pools), limits.errors) == (
        3, "template", {"campus": 1, "default": 4}, ())
    assert quota_request(limits) == [{"scope": "one:uid:5", "limit": 3, "pool": None},
                                     {"scope": "one:uid:5", "limit": 1, "pool": "campus"},
                                     {"scope": "one:uid:5", "limit": 4, "pool": "default"}]


def test_absent_or_empty_means_the_default_and_minus_one_means_unlimited():
    assert limits_of(user(), default=2).limit == 2 and limits_of(user(), default=2).source == "default"
    assert limits_of(user(FLOATING_IP_QUOTA=""), default=2).limit == 2
    unlimited = limits_of(user(FLOATING_IP_QUOTA="-1"), default=2)
    assert unlimited.limit == -1 and quota_request(unlimited) == []
    group = Limits(Subject("group", 100, "tenants"), 0, "template")
    assert quota_request(group) == [{"scope": "one:gid:100", "limit": 0, "pool": None}]


@pytest.mark.parametrize("attrs, line", [
    ({"FLOATING_IP_QUOTA": "three"}, "FLOATING_IP_QUOTA of user alice (5): 'three' is not a number"),
    ({"FLOATING_IP_QUOTA": "-2"}, "FLOATING_IP_QUOTA of user alice (5): '-2' is not a number"),
    ({"FLOATING_IP_QUOTA": "2.5"}, "'2.5' is not a number of floating IPs (an integer from -1"),
    ({"FLOATING_IP_QUOTA": "1000001"}, "'1000001' is not a number"),
    ({"FLOATING_IP_QUOTA": ({"A": "1"},)}, "FLOATING_IP_QUOTA of user alice (5): a vector"),
    ({"FLOATING_IP_POOL_QUOTA": "2"}, "FLOATING_IP_POOL_QUOTA of user alice (5): '2' is not a vector"),
    ({"FLOATING_IP_POOL_QUOTA": ({"LIMIT": "1"},)}, "POOL None is not a pool name"),
    ({"FLOATING_IP_POOL_QUOTA": ({"POOL": "Campus", "LIMIT": "1"},)}, "POOL 'Campus' is not a pool name"),
    ({"FLOATING_IP_POOL_QUOTA": ({"POOL": "campus"},)}, "POOL 'campus', LIMIT: '' is not a number"),
    ({"FLOATING_IP_POOL_QUOTA": ({"POOL": "campus", "LIMIT": "1"}, {"POOL": "campus", "LIMIT": "2"})},
     "POOL 'campus' appears twice"),
])
def test_bad_values_are_errors_never_unlimited(attrs, line):
    limits = limits_of(user(**attrs))
    assert limits.errors and any(line in e for e in limits.errors), limits.errors
    assert all("\n" not in e for e in limits.errors)


def test_documents_that_are_not_users_or_groups_are_refused():
    with pytest.raises(VmXmlError, match="expected <GROUP>"):
        parse_subject(ALICE, "group")
    with pytest.raises(VmXmlError, match="USER/ID: 'x' is not an integer"):
        parse_subject(ALICE.replace("<ID>5</ID>", "<ID>x</ID>"), "user")
    pool = parse_subject_pool(f"<USER_POOL>{ALICE}<QUOTAS><ID>5</ID></QUOTAS></USER_POOL>", "user")
    assert [s.name for s in pool] == ["alice"]


def test_parse_limit_and_the_config_default():
    assert parse_limit(" 7 ", "X") == 7
    assert parse_one_config_text("").floating_ip_quota == -1
    assert parse_one_config_text("[ONE_IPFLOATER]\nFLOATING_IP_QUOTA = 5\n").floating_ip_quota == 5
    with pytest.raises(ConfigError, match=r"<c>: FLOATING_IP_QUOTA: 'five' is not a number of floating IPs"):
        parse_one_config_text("[ONE_IPFLOATER]\nFLOATING_IP_QUOTA = five\n", "<c>")

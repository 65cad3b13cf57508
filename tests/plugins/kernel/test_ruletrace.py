"""The rule tracer itself: netfilter's jump, goto and return semantics, and its refusals."""

from __future__ import annotations

import pytest
from ruletrace import Packet, RuleSet, TraceError, trace

P = Packet("10.0.0.5", "10.96.0.1", 80)


def nat(*lines: str, chains: str = "A B") -> str:
    decl = "\n".join(f":{c} - [0:0]" for c in chains.split())
    return f"*nat\n{decl}\n" + "\n".join(lines) + "\nCOMMIT\n"


def test_jump_returns_to_the_next_rule_and_goto_returns_to_the_caller():
    jump = nat("-A PREROUTING -j A", "-A A -j B", "-A A -j DNAT --to-destination 1.1.1.1:1", "-A B -j RETURN")
    assert trace(jump, P)[0].dnat == "1.1.1.1:1"
    goto = nat("-A PREROUTING -j A", "-A PREROUTING -j DNAT --to-destination 2.2.2.2:2",
               "-A A -g B", "-A A -j DNAT --to-destination 1.1.1.1:1", "-A B -j RETURN")
    assert trace(goto, P)[0].dnat == "2.2.2.2:2"


def test_statistic_rules_split_the_walk_by_their_probability():
    text = nat("-A PREROUTING -m statistic --mode random --probability 0.25 -j DNAT --to-destination 1.1.1.1:1",
               "-A PREROUTING -j DNAT --to-destination 2.2.2.2:2")
    shares = {o.dnat: o.probability for o in trace(text, P)}
    assert shares == {"1.1.1.1:1": pytest.approx(0.25), "2.2.2.2:2": pytest.approx(0.75)}


def test_negated_matches_and_marks():
    text = nat("-A PREROUTING ! -s 10.0.0.0/8 -j DNAT --to-destination 1.1.1.1:1",
               "-A PREROUTING -j MARK --or-mark 0x4000",
               "-A PREROUTING -m mark --mark 0x4000/0x4000 -j DNAT --to-destination 2.2.2.2:2")
    assert trace(text, P)[0].dnat == "2.2.2.2:2"
    assert trace(text, Packet("192.168.1.1", "10.96.0.1", 80))[0].dnat == "1.1.1.1:1"


def test_hook_comment_lines_become_rules_in_builtin_chains():
    text = '# lbcore-hook: nat PREROUTING -m comment --comment "x y" -j A\n' + nat("-A A -j DNAT --to-destination 1.1.1.1:1")
    assert trace(text, P)[0].dnat == "1.1.1.1:1"


def test_unknown_options_and_missing_chains_are_errors_not_skipped():
    with pytest.raises(TraceError, match="--hashlimit"):
        RuleSet(nat("-A A -m hashlimit --hashlimit 5 -j RETURN"))
    with pytest.raises(TraceError, match="missing chain 'C'"):
        RuleSet(nat("-A A -j C"))
    with pytest.raises(TraceError, match="undeclared chain 'Z'"):
        RuleSet(nat("-A Z -j RETURN"))


def test_noflush_apply_flushes_named_chains_and_keeps_the_rest():
    rs = RuleSet(nat("-A A -j RETURN", "-A B -j RETURN"))
    rs.apply("*nat\n:A - [0:0]\n-A A -p udp -j RETURN\n:B - [0:0]\n-X B\nCOMMIT\n")
    assert rs.dump()["nat"]["A"] == ["-p udp -j RETURN"]
    assert "B" not in rs.dump()["nat"]

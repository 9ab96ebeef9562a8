"""The torch-free method catalogue agrees with the scoring registry."""

from gradtrust import catalogue


def test_catalogue_states_the_registry_in_its_order():
    from gradtrust.scores.registry import method_specs

    built_in = [(s.name, s.display_name, s.in_paper) for s in method_specs()
                if not s.name.startswith("plugin_")]  # tests/test_registry.py registers plug-ins
    assert [(i.name, i.display_name, i.in_paper) for i in catalogue.CATALOGUE.values()][:len(built_in)] == built_in


def test_order_display_and_paper_methods():
    assert catalogue.order_methods(["energy", "zzz_unknown", "softmax", "gradtrust", "softmax"]) == [
        "softmax", "gradtrust", "energy", "zzz_unknown"]
    assert catalogue.display_name("max_logit") == "NLL (max logit)"
    assert catalogue.display_name("not_a_method") == "not_a_method"
    assert catalogue.paper_methods() == ["softmax", "entropy", "max_logit", "margin", "odin", "mc_dropout",
                                         "gradnorm", "purview_initial", "purview_final", "gradtrust"]


def test_describe_appends_after_the_known_methods():
    info = catalogue.MethodInfo("zz_plugin", "ZZ plug-in")
    try:
        catalogue.describe(info)
        assert catalogue.known_methods()[-1] == "zz_plugin"
        assert catalogue.order_methods(["zz_plugin", "softmax", "other"]) == ["softmax", "zz_plugin", "other"]
        assert catalogue.display_name("zz_plugin") == "ZZ plug-in"
    finally:
        del catalogue.CATALOGUE["zz_plugin"]


def test_learn_takes_unknown_methods_from_a_manifest_in_order():
    described = {"softmax": {"display_name": "not this", "in_paper": False},  # known: kept as it is
                 "zz_second": {"display_name": "ZZ second", "in_paper": True},
                 "zz_first": {"display_name": "ZZ first"},
                 "zz_broken": "no display name"}
    try:
        catalogue.learn(described)
        catalogue.learn(None)  # a run without manifest
        assert catalogue.display_name("softmax") == "Softmax"
        assert catalogue.known_methods()[-2:] == ["zz_second", "zz_first"]
        assert "zz_second" in catalogue.paper_methods() and "zz_first" not in catalogue.paper_methods()
        assert catalogue.display_name("zz_broken") == "zz_broken"
    finally:
        for name in ("zz_second", "zz_first"):
            catalogue.CATALOGUE.pop(name, None)

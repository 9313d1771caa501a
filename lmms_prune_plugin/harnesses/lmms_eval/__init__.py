"""lmms-eval models contributed by this package (entry-point group ``lmms_eval.models``).

The entry point names a function, not a list: lmms-eval imports it while its own model
registry is being built, so ``ModelManifest`` may only be imported once that is done.
"""


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id="pruned_vlm",
            chat_class_path="lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm.PrunedVLM",
            simple_class_path="lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm.PrunedVLMSimple",
        ),
        ModelManifest(
            model_id="hf_vlm",
            chat_class_path="lmms_prune_plugin.harnesses.lmms_eval.hf_vlm.HFVLM",
            simple_class_path="lmms_prune_plugin.harnesses.lmms_eval.hf_vlm.HFVLMSimple",
        ),
    ]

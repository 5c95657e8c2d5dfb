"""Can these attribution maps be trusted? Compute only: tensors in, NumPy out, explicit arguments.

Two families of checks, both from the literature (see "Trusting attribution maps" in the field notes):

* **Model-parameter randomisation** (Adebayo et al., NeurIPS 2018). The model's parameterised
  stages are re-initialised from the logits downwards (cascading; optionally one stage at a time,
  "independent"), every attribution method is recomputed after each step, and each map is compared
  with the original one by the Spearman rank correlation of the absolute maps and by SSIM of the
  absolute maps min-max scaled to [0, 1]. A map that stays similar after the whole network has been
  re-initialised depends on the image, not on what the model learnt.
* **Faithfulness** (Petsiuk et al., BMVC 2018). Pixels are deleted (replaced by a fill, the dataset's
  mean pixel by default) or inserted (into a blurred copy of the image) most-important-first, and the
  explained class's softmax probability is recorded; the area under each curve over the fraction of
  pixels changed, in [0, 1], summarises it (deletion: lower is better; insertion: higher is better).
  A seeded uniform random map is the control. ROAD's noisy linear imputation (Rong et al., ICML 2022)
  can replace the constant fill, so that removed pixels do not form an out-of-distribution pattern.

Randomisation always works on a deep copy of the model: the caller's model is never modified.
Re-initialisation runs each module's own ``reset_parameters`` on CPU tensors under a CPU generator
seeded with ``seed`` (inside :func:`torch.random.fork_rng`, so the caller's random state is left as
it was), which makes the random weights the same on every device and in every run.

The package is split by job: :mod:`.stages` (which modules the cascade re-initialises),
:mod:`.randomisation` (seeded re-initialisation of a deep copy), :mod:`.maps` (the methods with
their parameters bound), :mod:`.similarity` (Spearman, SSIM), :mod:`.curves` (deletion, insertion,
ROAD) and :mod:`.checks` (the whole check and its summary). Its public names are re-exported here.
"""

from reportgen.methods.names import METHODS, RANDOM
from reportgen.methods.trust.checks import (
    ChecksResult,
    default_blur_sigma,
    headline_metrics,
    run_attribution_checks,
    summary_dict,
)
from reportgen.methods.trust.curves import (
    CurveKind,
    Imputation,
    curve_auc,
    curve_passes,
    deletion_insertion_curves,
    gaussian_blur,
    noisy_linear_imputation,
    perturbation_curves,
    pixel_ranks,
    step_counts,
)
from reportgen.methods.trust.maps import (
    KeyedMap,
    MapFn,
    MapKey,
    attribution_methods,
    map_key,
    passes_per_image,
    random_maps,
)
from reportgen.methods.trust.randomisation import randomize_stage, randomized_models
from reportgen.methods.trust.similarity import normalise_maps01, spearman_abs, ssim
from reportgen.methods.trust.stages import (
    MAX_AUTO_STAGES,
    MIN_AUTO_STAGES,
    Stage,
    randomization_stages,
)

__all__ = [
    "MAX_AUTO_STAGES",
    "METHODS",
    "MIN_AUTO_STAGES",
    "RANDOM",
    "ChecksResult",
    "CurveKind",
    "Imputation",
    "KeyedMap",
    "MapFn",
    "MapKey",
    "Stage",
    "attribution_methods",
    "curve_auc",
    "curve_passes",
    "default_blur_sigma",
    "deletion_insertion_curves",
    "gaussian_blur",
    "headline_metrics",
    "map_key",
    "noisy_linear_imputation",
    "normalise_maps01",
    "passes_per_image",
    "perturbation_curves",
    "pixel_ranks",
    "random_maps",
    "randomization_stages",
    "randomize_stage",
    "randomized_models",
    "run_attribution_checks",
    "spearman_abs",
    "ssim",
    "step_counts",
    "summary_dict",
]

"""The saliency methods' names, free of torch: the command line builds its parser from them
without importing it (``chanattr.baselines.METHODS`` maps each name to its function)."""

SALIENCY_METHODS = ("extremal", "prunegrad", "gradient", "gradient_x_input", "integrated_gradients",
                    "guided_backprop", "gradcam", "rise", "centre")
#: those ``chanattr run`` runs as a bare map (extremal and prunegrad are its methods explain and
#: prunegrad, with their own options and outputs)
MAP_METHODS = tuple(m for m in SALIENCY_METHODS if m not in ("extremal", "prunegrad"))

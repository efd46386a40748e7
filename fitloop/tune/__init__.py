"""Model selection: searches that train whole Trainers and pick a model from what they measure.

    fitloop.tune.size_search    the capacity search (`fl.size_search`): grow the MLP until it fits, shrink
                                it until it stops overfitting
    fitloop.tune.size_inputs    its arguments checked, the data as tensors, the trivial baseline's loss

Nothing is imported here: each search imports torch and the Trainer, so `fl.size_search` loads its module
on first use.
"""

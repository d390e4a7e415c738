"""A run's options: every option with its default and source (:mod:`~fastebm.config.options`), what each
accepts (:mod:`~fastebm.config.limits`), the recipes of the models beside M-EBM / M-JEM, the paper's rows, and
the options as the training CLI's flags (:mod:`~fastebm.config.flags`).
"""

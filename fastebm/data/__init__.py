"""The data: the dataset registry and its readers, the class-folder layout, image files, image sets in memory
and the training batches drawn from them.
"""

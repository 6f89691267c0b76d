"""The contract every half keeps and every layer above relies on: the two interfaces, the hookspecs and the
registry that finds plugins, optimizer stages, the noise streams and the dataset statistics a half carries.

Nothing here imports from another layer of modzoo (only the leaf modules ``errors`` and ``version``).
"""

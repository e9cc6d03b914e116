"""Distribution: entity tables partitioned by row range over workers, and the collectives that
keep the exact 1-vs-all objective. The only package (with ``distmap.tune``) that talks to
``torch.distributed`` or Ray; models and losses stay single-process code.
"""

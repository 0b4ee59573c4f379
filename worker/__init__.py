"""visitor-enrich: visitor journey context for the tools where people work.

The pipeline reads top to bottom in this package:
``events`` (inbound) -> ``tasks`` (orchestration) -> ``sources`` (analytics providers)
-> ``journey`` (normalized context) -> ``render`` -> ``sinks`` (CRM, helpdesk, chat).
"""

__version__ = "0.1.0"

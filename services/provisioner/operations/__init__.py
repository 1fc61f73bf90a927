"""The body of each lifecycle operation, one module per kind of operation.

``provisioner.runner`` runs a body under the tenant's lease and turns its outcome into a
lifecycle transition; ``provisioner.tasks`` registers each as a Celery task.
"""

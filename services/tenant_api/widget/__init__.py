"""The embeddable conversation widget: ``<c3-conversation>``, a dependency-free web component
(``c3-conversation.js``, written by us) served by the tenant API under a versioned path."""

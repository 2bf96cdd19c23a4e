"""Live publication: the feed catalogue, rendered versions, the publisher, the change hub, static export, MQTT push."""

"""The command pipeline: from a delivery to its acknowledgement, typed against a transport port."""

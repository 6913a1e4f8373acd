"""The shapes world: a synthetic world of coloured shapes and the small model steer ships for it."""

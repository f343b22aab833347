"""From a row to what a model sees: render and normalise the text, count its tokens, cut it into chunks."""

"""The image input of every tab: an upload reaches the handler as the file it came in.

Gradio's own preprocessing opens every upload with PIL before any handler runs, so a broken file
failed there and the page marked every output "Error". `retrieval.images` reads it inside the
handler instead (size from the header first), whose message names the file while the page keeps
its results. A subclass, not a patched instance: Gradio rebuilds a session's copy of a component
from its class whenever an event updates it. (Gradio writes `image_input.pyi` beside this file
for any component subclass; it is kept in the repository so that it is not rewritten.)
"""

import gradio as gr


class ImageInput(gr.Image):
    """A file-path image input whose uploads are handed over undecoded."""

    is_template = True  # drawn by the browser as the gr.Image it is (else: a missing component)

    def preprocess(self, payload):
        if payload is None or not payload.path:
            return super().preprocess(payload)  # nothing, or a data: URL Gradio writes to a file
        return payload.path

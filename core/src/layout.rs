//! Image-to-slots layout shared by the browser and the server (placeholder; owned by the model work).

-- The libraries the server loads at start; the new cluster of a major upgrade needs the same.
SHOW shared_preload_libraries;

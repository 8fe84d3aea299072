-- Whether the cluster was initialised with data checksums (on/off).
SHOW data_checksums;

-- A checkpoint while clients still work: the shutdown checkpoint then has little left to write.
CHECKPOINT;

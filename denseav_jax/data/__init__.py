"""Input data: the real data sets' readers (sources/), the synthetic world (synthetic/),
decoding (audio_io), the release's transforms (transforms), one example's keys and
layout (examples), preparation to array_record (prepare) and the Grain pipeline that
shards, batches and resumes the stream (pipeline)."""

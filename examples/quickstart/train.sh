#!/bin/sh
# A stand-in training script: reads its input folder (passed as an argument, which dataref
# substituted from $AZUREML_DATAREFERENCE_iris), "trains" a nearest-centroid model with awk,
# and writes it to the output folder that dataref uploads after the script exits.
set -eu

while [ $# -gt 0 ]; do
    case "$1" in
        --data) data=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done

echo "training on $data (the variable says $AZUREML_DATAREFERENCE_iris), $EPOCHS epochs"
mkdir -p "$out"

# The model: per-class mean of each feature.
awk -F, 'NR > 1 { n[$5]++; for (i = 1; i <= 4; i++) s[$5, i] += $i }
    END { for (c in n) { printf "%s", c; for (i = 1; i <= 4; i++) printf ",%.3f", s[c, i] / n[c]; print "" } }' \
    "$data/train.csv" | sort > "$out/model.csv"

# Accuracy on the held-out set.
awk -F, 'NR == FNR { for (i = 2; i <= 5; i++) m[$1, i - 1] = $i; classes[$1] = 1; next }
    FNR > 1 { best = ""; bd = 1e9
        for (c in classes) { d = 0; for (i = 1; i <= 4; i++) d += ($i - m[c, i]) ^ 2
            if (d < bd) { bd = d; best = c } }
        total++; if (best == $5) right++ }
    END { printf "{\"accuracy\": %.3f, \"test_rows\": %d}\n", right / total, total }' \
    "$out/model.csv" "$data/test.csv" > "$out/metrics.json"

echo "model written to $out: $(cat "$out/metrics.json")"

#!/bin/sh
# A stand-in training script: fits y = a*x + b to the CSV files of its input folder with
# gradient descent, one checkpoint per epoch, then the final model and its metrics. It knows
# nothing about Slurm or storage: dataref downloaded the input and uploads `$2` afterwards.
set -eu
data=$1
out=$2
epochs=${EPOCHS:-3}
mkdir -p "$out"

a=0 b=0 epoch=1
while [ "$epoch" -le "$epochs" ]; do
    set -- $(awk -F, -v a="$a" -v b="$b" 'FNR > 1 { n++; e = a * $1 + b - $2; ga += e * $1; gb += e }
        END { printf "%.6f %.6f\n", a - 0.01 * ga / n, b - 0.01 * gb / n }' "$data"/*.csv)
    a=$1 b=$2
    echo "a=$a b=$b" > "$out/checkpoint-$epoch.txt"
    echo "epoch $epoch/$epochs: a=$a b=$b"
    sleep "${EPOCH_SECONDS:-1}"
    epoch=$((epoch + 1))
done

echo "a=$a b=$b" > "$out/model.txt"
awk -F, -v a="$a" -v b="$b" 'FNR > 1 { n++; e = a * $1 + b - $2; s += e * e }
    END { printf "{\"mse\": %.4f, \"rows\": %d}\n", s / n, n }' "$data"/*.csv > "$out/metrics.json"
echo "model written to $out: $(cat "$out/metrics.json")"

"""The demo job's training script: a scikit-learn classifier on the digits data set.

Written the way SageMaker script-mode scripts are: hyperparameters arrive as arguments, the
data and model folders through the SM_* variables the sagemaker-training toolkit sets.
"""

import argparse
import os
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser()
    # The toolkit passes one-letter hyperparameters with a single dash.
    parser.add_argument("-C", "--C", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument(
        "--train", default=os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
    )
    args = parser.parse_args()

    table = np.loadtxt(Path(args.train) / "digits.csv", delimiter=",")
    features, labels = table[:, :-1], table[:, -1].astype(int)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels
    )
    print(f"training on {len(x_train)} images, testing on {len(x_test)}")
    model = LogisticRegression(C=args.C, max_iter=args.max_iter)
    model.fit(x_train / 16.0, y_train)
    accuracy = model.score(x_test / 16.0, y_test)
    print(f"test_accuracy={accuracy:.4f}")
    joblib.dump(model, Path(args.model_dir) / "model.joblib")
    print(f"saved the model to {args.model_dir}/model.joblib")


if __name__ == "__main__":
    main()

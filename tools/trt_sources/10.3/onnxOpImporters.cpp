// Excerpt of onnx/onnx-tensorrt@10.1-GA (96e781103cfc4adf4a6bb557e94bac8e693f6f4c) onnxOpImporters.cpp,
// Apache-2.0 like the original, whose licence block is kept first. Only the marked line
// ranges are kept, under their original line numbers; see tools/gen_trt_rules.py.
// excerpt: lines 1-3 of onnxOpImporters.cpp
/*
 * SPDX-License-Identifier: Apache-2.0
 */
// excerpt: lines 4406-4406 of onnxOpImporters.cpp
        interpolationMode = nvinfer1::InterpolationMode::kCUBIC;
// excerpt: lines 5648-5648 of onnxOpImporters.cpp
            "Cannot infer squeeze dimensions from a dynamic shape! Please re-export your model with the Squeeze axes "

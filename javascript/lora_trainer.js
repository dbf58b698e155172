// LoRA Trainer: "Send to txt2img" puts "<lora:name:w>" (and the trigger word) into the txt2img prompt.
(function () {
    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }
    window.loraTrainerSendToTxt2img = function (text) {
        var box = app().querySelector("#txt2img_prompt textarea");
        if (!box || !text) {
            return;
        }
        box.value = box.value.trim() ? box.value.trim() + ", " + text : text;
        if (typeof updateInput === "function") {
            updateInput(box);
        } else {
            box.dispatchEvent(new Event("input", {bubbles: true}));
        }
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
        }
    };
    // The log box follows new lines (gradio 3.41, A1111's, has no Textbox autoscroll): when the text
    // grows and the reader was at the bottom, stay at the bottom.
    var lastLength = 0;
    var following = true;  // the reader is at the bottom (checked before new text arrives)
    setInterval(function () {
        var box = app().querySelector("#lt_log textarea");
        if (!box) {
            return;
        }
        if (box.value.length !== lastLength) {
            lastLength = box.value.length;
            if (following) {
                box.scrollTop = box.scrollHeight;
            }
        }
        following = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    }, 700);
})();
